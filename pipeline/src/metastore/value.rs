//! The value layer: the SQL values the store binds and reads, and the one-connection
//! interface ([`Db`]) a backend implements.

use std::str::FromStr;

use serde_json::Value as Json;

use crate::names::UnknownName;
use crate::status::{AttemptStatus, EventKind, RunStatus, TaskStatus, Trigger};
use crate::task::TaskId;

/// A SQL value (the only types the store uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// 64-bit integer.
    Int(i64),
    /// Double.
    Real(f64),
    /// Text.
    Text(String),
}

impl Value {
    /// As text (numbers formatted); `None` for NULL.
    pub(super) fn text(&self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Real(r) => Some(r.to_string()),
            Value::Null => None,
        }
    }
    /// As an integer (reals truncated, text parsed); `None` for NULL or unparsable text.
    pub(super) fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Real(r) => Some(*r as i64),
            Value::Text(s) => s.parse().ok(),
            Value::Null => None,
        }
    }
    /// As a double (text parsed); `None` for NULL or unparsable text.
    pub(super) fn real(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Real(r) => Some(*r),
            Value::Text(s) => s.parse().ok(),
            Value::Null => None,
        }
    }
    /// Text parsed as JSON; `None` for NULL or invalid JSON.
    pub(super) fn json(&self) -> Option<Json> {
        self.text().and_then(|s| serde_json::from_str(&s).ok())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Real(f)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}
impl From<&Json> for Value {
    fn from(j: &Json) -> Self {
        Value::Text(j.to_string())
    }
}

/// SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// One database connection: what a backend provides.
pub trait Db: Send {
    /// The backend's dialect (only DDL differs).
    fn dialect(&self) -> Dialect;
    /// Runs one statement with `$1..$N` parameters; returns affected rows.
    fn execute(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<u64>;
    /// Runs one query with `$1..$N` parameters; returns every row.
    fn query(&mut self, sql: &str, params: &[Value]) -> anyhow::Result<Vec<Vec<Value>>>;
    /// Runs several `;`-separated statements without parameters.
    fn batch(&mut self, sql: &str) -> anyhow::Result<()>;
    /// Starts a transaction that excludes other writers of the store until commit
    /// (SQLite `BEGIN IMMEDIATE`; PostgreSQL `BEGIN` + a transaction advisory lock).
    fn begin_exclusive(&mut self) -> anyhow::Result<()>;
}

/// Closed sets are stored as their names.
macro_rules! from_name {
    ($($t:ty),+) => {
        $(impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Text(v.as_str().to_string())
            }
        })+
    };
}
from_name!(TaskStatus, AttemptStatus, RunStatus, Trigger, EventKind);

impl From<&TaskId> for Value {
    fn from(t: &TaskId) -> Self {
        Value::Text(t.to_string())
    }
}

impl Value {
    /// The text as one of a closed set of names (a status, a task); the error names the
    /// value found and the valid ones.
    pub(super) fn name<T: FromStr<Err = UnknownName>>(&self) -> Result<T, UnknownName> {
        self.text().unwrap_or_default().parse()
    }
}
