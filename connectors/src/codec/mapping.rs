//! The Arrow <-> `tf.train.Example` type mapping shared by the encoder, the decoder and schema
//! inference: feature kinds, null defaults, and how a column type splits into a list shape and
//! a leaf type (see the table in the crate docs).

use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, make_array};
use arrow::datatypes::{DataType, Field, FieldRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The three value kinds of a `tf.train.Feature`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// `int64_list`
    Int64List,
    /// `float_list`
    FloatList,
    /// `bytes_list`
    BytesList,
}

impl FeatureKind {
    /// Protobuf name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            FeatureKind::Int64List => "int64_list",
            FeatureKind::FloatList => "float_list",
            FeatureKind::BytesList => "bytes_list",
        }
    }
    /// Tag byte of the kind's field inside a `Feature` message.
    pub(super) fn tag(self) -> u8 {
        match self {
            FeatureKind::BytesList => 0x0a,
            FeatureKind::FloatList => 0x12,
            FeatureKind::Int64List => 0x1a,
        }
    }
}

/// Value written for a null cell instead of leaving the feature out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultValue {
    /// One int64 (int, bool, temporal columns).
    Int64(i64),
    /// One float (float and decimal columns).
    Float(f32),
    /// One bytes value (string / binary columns; JSON form is a UTF-8 string).
    Bytes(String),
    /// An empty list of the column's kind.
    Empty,
}

/// Options of the Example encoder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EncodeOptions {
    /// Per-column value written for nulls; columns not listed leave the feature out.
    #[serde(default)]
    pub null_defaults: BTreeMap<String, DefaultValue>,
}

/// How the leaf (scalar or list item) type of a column maps to a Feature kind.
pub fn leaf_kind(column: &str, dt: &DataType) -> Result<FeatureKind> {
    use DataType::*;
    Ok(match dt {
        Boolean
        | Int8
        | Int16
        | Int32
        | Int64
        | UInt8
        | UInt16
        | UInt32
        | UInt64
        | Date32
        | Date64
        | Time32(_)
        | Time64(_)
        | Timestamp(_, _)
        | Duration(_) => FeatureKind::Int64List,
        Float16 | Float32 | Float64 | Decimal128(_, _) | Decimal256(_, _) => FeatureKind::FloatList,
        Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView | FixedSizeBinary(_) => {
            FeatureKind::BytesList
        }
        Dictionary(_, v) => leaf_kind(column, v)?,
        other => {
            return Err(Error::UnsupportedType {
                column: column.to_string(),
                data_type: other.to_string(),
                hint: unsupported_hint(other),
            });
        }
    })
}

pub(super) fn unsupported_hint(dt: &DataType) -> String {
    match dt {
        DataType::Struct(_) => {
            "; flatten the struct into one column per field (e.g. SELECT s.a AS \"s.a\") first"
                .into()
        }
        DataType::Map(_, _) => {
            "; maps have no Example representation (use two list columns)".into()
        }
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
            "; only lists of scalar types are supported (no nested lists)".into()
        }
        _ => String::new(),
    }
}

/// List shape of a column.
#[derive(Debug, Clone)]
pub(super) enum Shape {
    Scalar,
    List(FieldRef),
    LargeList(FieldRef),
    Fixed(FieldRef, i32),
}

/// Split a column type into (shape, leaf type) and validate it.
pub(super) fn column_shape(field: &Field) -> Result<(Shape, DataType, FeatureKind)> {
    let name = field.name();
    let (shape, leaf) = match field.data_type() {
        DataType::List(f) => (Shape::List(f.clone()), f.data_type().clone()),
        DataType::LargeList(f) => (Shape::LargeList(f.clone()), f.data_type().clone()),
        DataType::FixedSizeList(f, n) => (Shape::Fixed(f.clone(), *n), f.data_type().clone()),
        other => (Shape::Scalar, other.clone()),
    };
    let kind = leaf_kind(name, &leaf).map_err(|e| match (&shape, e) {
        (Shape::Scalar, e) => e,
        (_, _) => Error::UnsupportedType {
            column: name.to_string(),
            data_type: field.data_type().to_string(),
            hint: "; only lists of scalar types are supported (no nested lists)".into(),
        },
    })?;
    Ok((shape, leaf, kind))
}

/// The same buffers under another (same-width) type.
pub(super) fn reinterpret(a: &dyn Array, dt: DataType) -> Result<ArrayRef> {
    let data = a
        .to_data()
        .into_builder()
        .data_type(dt)
        .build()
        .map_err(|e| Error::arrow("reinterpreting array", e))?;
    Ok(make_array(data))
}
