//! Declared source schemas: `"COLUMN TYPE"` strings parsed into an Arrow schema. Pure: the
//! spec model validates with it and the sources build tables with it; it reads no data.

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

/// A column type a source schema can declare: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `bool` / `boolean`.
    Bool,
    /// `int32` / `int`.
    Int32,
    /// `int64` / `bigint`.
    Int64,
    /// `float32` / `float`.
    Float32,
    /// `float64` / `double`.
    Float64,
    /// `string` / `utf8`.
    String,
    /// `date` (days since the epoch).
    Date,
    /// `timestamp` (microseconds, UTC).
    Timestamp,
}

impl ColumnType {
    /// Parses a type name (case-insensitive), `None` when unknown.
    pub fn parse(name: &str) -> Option<ColumnType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "bool" | "boolean" => ColumnType::Bool,
            "int32" | "int" => ColumnType::Int32,
            "int64" | "bigint" => ColumnType::Int64,
            "float32" | "float" => ColumnType::Float32,
            "float64" | "double" => ColumnType::Float64,
            "string" | "utf8" => ColumnType::String,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            _ => return None,
        })
    }

    /// The Arrow type a column of this type is read as.
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float32 => DataType::Float32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::String => DataType::Utf8,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }
}

/// A declared schema that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// An entry is not `COLUMN TYPE` or `COLUMN TYPE not null`.
    #[error(
        "entry {index} `{entry}`: expected \"COLUMN TYPE\" or \"COLUMN TYPE not null\", e.g. \"user_id int64 not null\""
    )]
    Malformed {
        /// 0-based entry index.
        index: usize,
        /// The entry.
        entry: String,
    },
    /// An unknown type name.
    #[error(
        "column `{column}`: unknown type `{type_name}` (expected bool, int32, int64, float32, \
         float64, string, date or timestamp)"
    )]
    UnknownType {
        /// The column.
        column: String,
        /// The type as written.
        type_name: String,
    },
    /// A column declared twice.
    #[error("column `{0}` appears twice")]
    Duplicate(String),
    /// A declared column the files do not have.
    #[error("column `{0}` of the declared schema is not in the files")]
    MissingColumn(String),
    /// A declared column the files have with another type.
    #[error("column `{column}`: schema says {declared}, files have {found}")]
    TypeMismatch {
        /// The column.
        column: String,
        /// The declared type.
        declared: DataType,
        /// The type in the files.
        found: DataType,
    },
}

/// Parses `"column type"` strings into an Arrow schema; columns are nullable unless the
/// entry ends in `not null`.
pub fn parse_schema(columns: &[String]) -> Result<Schema, SchemaError> {
    let mut fields: Vec<Field> = Vec::with_capacity(columns.len());
    for (index, c) in columns.iter().enumerate() {
        let parts: Vec<&str> = c.split_whitespace().collect();
        let malformed = || SchemaError::Malformed {
            index,
            entry: c.clone(),
        };
        let (name, ty, nullable) = match parts.as_slice() {
            [name, ty] => (*name, *ty, true),
            [name, ty, not, null]
                if not.eq_ignore_ascii_case("not") && null.eq_ignore_ascii_case("null") =>
            {
                (*name, *ty, false)
            }
            _ => return Err(malformed()),
        };
        let Some(ty) = ColumnType::parse(ty) else {
            return Err(SchemaError::UnknownType {
                column: name.to_string(),
                type_name: ty.to_ascii_lowercase(),
            });
        };
        if fields.iter().any(|f| f.name() == name) {
            return Err(SchemaError::Duplicate(name.to_string()));
        }
        fields.push(Field::new(name, ty.arrow(), nullable));
    }
    Ok(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schema_strings() {
        let s =
            parse_schema(&["a int64".into(), "ts timestamp".into(), "c string".into()]).unwrap();
        assert_eq!(s.fields().len(), 3);
        assert_eq!(
            s.field(1).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        let e = parse_schema(&["a".into()]).unwrap_err();
        assert!(e.to_string().contains("entry 0"), "{e}");
        let e = parse_schema(&["a int128".into()]).unwrap_err();
        assert!(e.to_string().contains("unknown type `int128`"), "{e}");
        let e = parse_schema(&["a int".into(), "a string".into()]).unwrap_err();
        assert_eq!(e, SchemaError::Duplicate("a".into()));
        let s = parse_schema(&["a int64 NOT NULL".into(), "b string".into()]).unwrap();
        assert!(!s.field(0).is_nullable() && s.field(1).is_nullable());
        assert!(parse_schema(&["a int64 not nul".into()]).is_err());
    }
}
