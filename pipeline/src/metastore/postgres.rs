//! PostgreSQL backend (a `postgres://user:password@host:port/db` URL). Connections are
//! unencrypted (`NoTls`): use it on a trusted network or through a local proxy.

use std::str::FromStr;
use std::time::Duration;

use ::postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use anyhow::Context;

use super::sqlite::first_line;
use super::{Db, Dialect, Value};

/// Advisory lock key serialising migrations and exclusive transactions ("kiln").
const ADVISORY_KEY: i64 = 0x6b69_6c6e;

/// A PostgreSQL connection.
pub struct Postgres {
    client: ::postgres::Client,
    url: String,
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT2 => (*i as i16).to_sql(ty, out),
                Type::INT4 => (*i as i32).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            Value::Real(r) => match *ty {
                Type::FLOAT4 => (*r as f32).to_sql(ty, out),
                _ => r.to_sql(ty, out),
            },
            Value::Text(s) => s.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl Postgres {
    /// Connects (10 s timeout).
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        let shown = redact(url);
        let mut config = ::postgres::Config::from_str(url)
            .with_context(|| format!("metadata store URL {shown}"))?;
        config.connect_timeout(Duration::from_secs(10));
        let client = config
            .connect(::postgres::NoTls)
            .with_context(|| format!("connecting to the metadata store {shown}"))?;
        Ok(Postgres { client, url: shown })
    }

    fn params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
        params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
    }
}

impl Db for Postgres {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        self.client
            .execute(sql, &Self::params(params))
            .with_context(|| format!("{}: {}", self.url, first_line(sql)))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Vec<Value>>> {
        let rows = self
            .client
            .query(sql, &Self::params(params))
            .with_context(|| format!("{}: {}", self.url, first_line(sql)))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut r = Vec::with_capacity(row.len());
            for (i, col) in row.columns().iter().enumerate() {
                let v = match *col.type_() {
                    Type::INT8 => row.get::<_, Option<i64>>(i).map(Value::Int),
                    Type::INT4 => row.get::<_, Option<i32>>(i).map(|v| Value::Int(v as i64)),
                    Type::INT2 => row.get::<_, Option<i16>>(i).map(|v| Value::Int(v as i64)),
                    Type::FLOAT8 => row.get::<_, Option<f64>>(i).map(Value::Real),
                    Type::FLOAT4 => row.get::<_, Option<f32>>(i).map(|v| Value::Real(v as f64)),
                    Type::BOOL => row.get::<_, Option<bool>>(i).map(|v| Value::Int(v as i64)),
                    Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
                        row.get::<_, Option<String>>(i).map(Value::Text)
                    }
                    ref other => anyhow::bail!(
                        "{}: column `{}` has unsupported type {other}",
                        self.url,
                        col.name()
                    ),
                };
                r.push(v.unwrap_or(Value::Null));
            }
            out.push(r);
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> anyhow::Result<()> {
        self.client
            .batch_execute(sql)
            .with_context(|| format!("{}: {}", self.url, first_line(sql)))
    }

    fn begin_exclusive(&mut self) -> anyhow::Result<()> {
        self.batch(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({ADVISORY_KEY})"
        ))
    }
}
