//! SQLite backend (embedded, the default): one file, WAL journal, a busy timeout so
//! concurrent `kiln` processes wait for each other instead of failing.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::{Db, Dialect, Value};

/// A SQLite connection.
pub struct Sqlite {
    conn: rusqlite::Connection,
    path: String,
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
        }))
    }
}

/// `$N` parameters (the store's SQL) -> SQLite's `?N`.
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

impl Sqlite {
    /// Opens (creating) the database file and its directory.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = rusqlite::Connection::open(path)
            .with_context(|| format!("opening SQLite metadata store {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        // WAL lets readers (`kiln runs list`) work while a run writes; filesystems without
        // shared memory keep the default journal.
        let _ =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0));
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Sqlite {
            conn,
            path: path.display().to_string(),
        })
    }
}

impl Db for Sqlite {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64> {
        let n = self
            .conn
            .execute(
                &placeholders(sql),
                rusqlite::params_from_iter(params.iter()),
            )
            .with_context(|| format!("{}: {}", self.path, first_line(sql)))?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Vec<Value>>> {
        let ctx = || format!("{}: {}", self.path, first_line(sql));
        let mut stmt = self.conn.prepare(&placeholders(sql)).with_context(ctx)?;
        let n = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter()))
            .with_context(ctx)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().with_context(ctx)? {
            let mut r = Vec::with_capacity(n);
            for i in 0..n {
                r.push(match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Value::Text(String::from_utf8_lossy(t).into_owned())
                    }
                });
            }
            out.push(r);
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> anyhow::Result<()> {
        self.conn
            .execute_batch(sql)
            .with_context(|| format!("{}: {}", self.path, first_line(sql)))
    }

    fn begin_exclusive(&mut self) -> anyhow::Result<()> {
        self.batch("BEGIN IMMEDIATE")
    }
}

/// The first line of a statement, for error messages.
pub(super) fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rewrites_placeholders() {
        assert_eq!(
            super::placeholders("SELECT $1, '$x', $12"),
            "SELECT ?1, '$x', ?12"
        );
    }
}
