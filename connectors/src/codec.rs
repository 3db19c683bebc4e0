//! Arrow <-> `tf.train.Example`, both directions, without intermediate per-row messages.
//!
//! * [`ExampleEncoder`] writes the protobuf bytes of each row straight from the Arrow columns
//!   (precomputed key prefixes, exact lengths, varints into one reused buffer) and can frame
//!   them as TFRecords in the same pass.
//! * [`ExampleDecoder`] scans serialized Examples with a hand-written protobuf field scanner and
//!   appends values into per-column buffers, then builds Arrow arrays of the target schema.
//!   Records that do not fit are reported with their index and the feature name and leave the
//!   decoder's buffers untouched (the caller may skip them and continue).
//! * [`infer_schema`] derives a schema from sample records.
//!
//! The type mapping is documented in the crate docs (`lib.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, BooleanBufferBuilder,
    FixedSizeBinaryArray, FixedSizeListArray, Float32Array, Int64Array, LargeBinaryArray,
    LargeListArray, ListArray, StringArray, make_array,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tfrecord::masked_crc32c;
use crate::wire::{self, WT_I32, WT_LEN, WT_VARINT, put_varint, varint_len};

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
    fn tag(self) -> u8 {
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

fn unsupported_hint(dt: &DataType) -> String {
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
enum Shape {
    Scalar,
    List(FieldRef),
    LargeList(FieldRef),
    Fixed(FieldRef, i32),
}

/// Split a column type into (shape, leaf type) and validate it.
fn column_shape(field: &Field) -> Result<(Shape, DataType, FeatureKind)> {
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

// ------------------------------------------------------------------------------------------
// Encoder
// ------------------------------------------------------------------------------------------

struct ColPlan {
    name: String,
    /// `0x0a <keylen> key 0x12` — the map entry's key field and the value field tag.
    key_part: Vec<u8>,
    kind: FeatureKind,
    default: Option<DefaultValue>,
    /// Scalar fast path: everything before the value of a one-value int64 feature whose varint
    /// has `i` bytes (index 1..=10), and before the 4 bytes of a one-value float feature.
    i64_prefix: Vec<Vec<u8>>,
    f32_prefix: Vec<u8>,
}

fn scalar_prefix(key_part: &[u8], kind_tag: u8, list_len: usize, value_head: &[u8]) -> Vec<u8> {
    let feature_len = 1 + varint_len(list_len as u64) + list_len;
    let mut v = Vec::new();
    entry_header(&mut v, key_part, feature_len);
    v.push(kind_tag);
    put_varint(&mut v, list_len as u64);
    v.extend_from_slice(value_head);
    v
}

/// Canonical leaf values of one column for one batch.
enum Leaf {
    I64(Int64Array),
    F32(Float32Array),
    Bin(BinaryArray),
    LBin(LargeBinaryArray),
    View(BinaryViewArray),
    Fixed(FixedSizeBinaryArray),
}

impl Leaf {
    #[inline(always)]
    fn bytes(&self, i: usize) -> &[u8] {
        match self {
            Leaf::Bin(a) => a.value(i),
            Leaf::LBin(a) => a.value(i),
            Leaf::View(a) => a.value(i),
            Leaf::Fixed(a) => a.value(i),
            _ => unreachable!("bytes() on a numeric leaf"),
        }
    }
}

enum Offs {
    None,
    I32(OffsetBuffer<i32>),
    I64(OffsetBuffer<i64>),
    Fixed(FixedSizeListArray),
}

struct ColView {
    leaf: Leaf,
    offs: Offs,
    nulls: Option<NullBuffer>,
}

impl ColView {
    #[inline(always)]
    fn range(&self, row: usize) -> (usize, usize) {
        match &self.offs {
            Offs::None => (row, row + 1),
            Offs::I32(o) => (o[row] as usize, o[row + 1] as usize),
            Offs::I64(o) => (o[row] as usize, o[row + 1] as usize),
            Offs::Fixed(a) => {
                let s = a.value_offset(row) as usize;
                (s, s + a.value_length() as usize)
            }
        }
    }
}

fn reinterpret(a: &dyn Array, dt: DataType) -> Result<ArrayRef> {
    let data = a
        .to_data()
        .into_builder()
        .data_type(dt)
        .build()
        .map_err(|e| Error::arrow("reinterpreting array", e))?;
    Ok(make_array(data))
}

fn cast_ctx(a: &dyn Array, dt: &DataType, column: &str) -> Result<ArrayRef> {
    cast(a, dt).map_err(|e| Error::arrow(format!("column '{column}': cast to {dt}"), e))
}

/// Convert a leaf array (no lists) to its canonical Example representation.
fn canon_leaf(a: &ArrayRef, column: &str) -> Result<Leaf> {
    use DataType::*;
    let dt = a.data_type();
    Ok(match dt {
        Int64 => Leaf::I64(a.as_primitive().clone()),
        Timestamp(_, _) | Date64 | Duration(_) | Time64(_) => {
            Leaf::I64(reinterpret(a.as_ref(), Int64)?.as_primitive().clone())
        }
        Date32 | Time32(_) => {
            let i = reinterpret(a.as_ref(), Int32)?;
            Leaf::I64(cast_ctx(&i, &Int64, column)?.as_primitive().clone())
        }
        UInt64 => {
            let u = a.as_primitive::<arrow::datatypes::UInt64Type>();
            for (row, v) in u.iter().enumerate() {
                if let Some(v) = v
                    && v > i64::MAX as u64
                {
                    return Err(Error::Encode {
                        column: column.to_string(),
                        row,
                        message: format!(
                            "UInt64 value {v} does not fit in int64_list (max {})",
                            i64::MAX
                        ),
                    });
                }
            }
            Leaf::I64(cast_ctx(a, &Int64, column)?.as_primitive().clone())
        }
        Boolean | Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 => {
            Leaf::I64(cast_ctx(a, &Int64, column)?.as_primitive().clone())
        }
        Float32 => Leaf::F32(a.as_primitive().clone()),
        Float16 | Float64 => Leaf::F32(cast_ctx(a, &Float32, column)?.as_primitive().clone()),
        Decimal128(_, _) | Decimal256(_, _) => {
            let d = cast_ctx(a, &Float64, column)?;
            Leaf::F32(cast_ctx(&d, &Float32, column)?.as_primitive().clone())
        }
        Binary => Leaf::Bin(a.as_binary::<i32>().clone()),
        LargeBinary => Leaf::LBin(a.as_binary::<i64>().clone()),
        BinaryView => Leaf::View(a.as_binary_view().clone()),
        FixedSizeBinary(_) => Leaf::Fixed(a.as_fixed_size_binary().clone()),
        Utf8 => Leaf::Bin(cast_ctx(a, &Binary, column)?.as_binary::<i32>().clone()),
        LargeUtf8 => Leaf::LBin(
            cast_ctx(a, &LargeBinary, column)?
                .as_binary::<i64>()
                .clone(),
        ),
        Utf8View => Leaf::View(cast_ctx(a, &BinaryView, column)?.as_binary_view().clone()),
        Dictionary(_, v) => {
            let flat = cast_ctx(a, v, column)?;
            canon_leaf(&flat, column)?
        }
        other => {
            return Err(Error::UnsupportedType {
                column: column.to_string(),
                data_type: other.to_string(),
                hint: unsupported_hint(other),
            });
        }
    })
}

fn check_no_null_items(
    column: &str,
    child: &ArrayRef,
    nulls: Option<&NullBuffer>,
    len: usize,
    range: impl Fn(usize) -> (usize, usize),
) -> Result<()> {
    if child.null_count() == 0 {
        return Ok(());
    }
    for row in 0..len {
        if nulls.is_some_and(|n| n.is_null(row)) {
            continue;
        }
        let (s, e) = range(row);
        if (s..e).any(|i| child.is_null(i)) {
            return Err(Error::Encode {
                column: column.to_string(),
                row,
                message: "list contains a null item; tf.train.Example lists cannot hold nulls"
                    .into(),
            });
        }
    }
    Ok(())
}

fn col_view(a: &ArrayRef, column: &str) -> Result<ColView> {
    let nulls = a.logical_nulls();
    Ok(match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let child = l.values().clone();
            let o = l.offsets().clone();
            check_no_null_items(column, &child, nulls.as_ref(), l.len(), |r| {
                (o[r] as usize, o[r + 1] as usize)
            })?;
            ColView {
                leaf: canon_leaf(&child, column)?,
                offs: Offs::I32(o),
                nulls,
            }
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            let child = l.values().clone();
            let o = l.offsets().clone();
            check_no_null_items(column, &child, nulls.as_ref(), l.len(), |r| {
                (o[r] as usize, o[r + 1] as usize)
            })?;
            ColView {
                leaf: canon_leaf(&child, column)?,
                offs: Offs::I64(o),
                nulls,
            }
        }
        DataType::FixedSizeList(_, _) => {
            let l = a.as_fixed_size_list().clone();
            let child = l.values().clone();
            check_no_null_items(column, &child, nulls.as_ref(), l.len(), |r| {
                let s = l.value_offset(r) as usize;
                (s, s + l.value_length() as usize)
            })?;
            ColView {
                leaf: canon_leaf(&child, column)?,
                offs: Offs::Fixed(l),
                nulls,
            }
        }
        _ => ColView {
            leaf: canon_leaf(a, column)?,
            offs: Offs::None,
            nulls,
        },
    })
}

#[inline(always)]
fn entry_header(out: &mut Vec<u8>, key_part: &[u8], feature_len: usize) {
    let entry_len = key_part.len() + varint_len(feature_len as u64) + feature_len;
    out.push(0x0a);
    put_varint(out, entry_len as u64);
    out.extend_from_slice(key_part);
    put_varint(out, feature_len as u64);
}

#[inline(always)]
fn write_i64s(out: &mut Vec<u8>, key_part: &[u8], vals: &[i64]) {
    let mut packed = 0usize;
    for v in vals {
        packed += varint_len(*v as u64);
    }
    let list_len = if vals.is_empty() {
        0
    } else {
        1 + varint_len(packed as u64) + packed
    };
    let feature_len = 1 + varint_len(list_len as u64) + list_len;
    entry_header(out, key_part, feature_len);
    out.push(0x1a);
    put_varint(out, list_len as u64);
    if !vals.is_empty() {
        out.push(0x0a);
        put_varint(out, packed as u64);
        for v in vals {
            put_varint(out, *v as u64);
        }
    }
}

#[inline(always)]
fn write_f32s(out: &mut Vec<u8>, key_part: &[u8], vals: &[f32]) {
    let packed = 4 * vals.len();
    let list_len = if vals.is_empty() {
        0
    } else {
        1 + varint_len(packed as u64) + packed
    };
    let feature_len = 1 + varint_len(list_len as u64) + list_len;
    entry_header(out, key_part, feature_len);
    out.push(0x12);
    put_varint(out, list_len as u64);
    if !vals.is_empty() {
        out.push(0x0a);
        put_varint(out, packed as u64);
        for v in vals {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

#[inline(always)]
fn write_bytes_range(out: &mut Vec<u8>, key_part: &[u8], leaf: &Leaf, s: usize, e: usize) {
    let mut list_len = 0usize;
    for i in s..e {
        let n = leaf.bytes(i).len();
        list_len += 1 + varint_len(n as u64) + n;
    }
    let feature_len = 1 + varint_len(list_len as u64) + list_len;
    entry_header(out, key_part, feature_len);
    out.push(0x0a);
    put_varint(out, list_len as u64);
    for i in s..e {
        let b = leaf.bytes(i);
        out.push(0x0a);
        put_varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
}

fn write_empty(out: &mut Vec<u8>, key_part: &[u8], kind: FeatureKind) {
    entry_header(out, key_part, 2);
    out.push(kind.tag());
    out.push(0);
}

/// Encodes RecordBatches into serialized `tf.train.Example`s, column by column, straight into
/// protobuf bytes.
pub struct ExampleEncoder {
    schema: SchemaRef,
    plans: Vec<ColPlan>,
    features: Vec<u8>,
}

impl ExampleEncoder {
    /// An encoder for batches of `schema`. Fails on unsupported column types (naming the column)
    /// and on defaults that do not match a column's kind.
    pub fn new(schema: SchemaRef, options: &EncodeOptions) -> Result<Self> {
        for name in options.null_defaults.keys() {
            if schema.field_with_name(name).is_err() {
                return Err(Error::Options(format!(
                    "null default given for unknown column '{name}'"
                )));
            }
        }
        let mut plans = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            let (_, _, kind) = column_shape(f)?;
            let mut key_part = vec![0x0a];
            put_varint(&mut key_part, f.name().len() as u64);
            key_part.extend_from_slice(f.name().as_bytes());
            key_part.push(0x12);
            let default = options.null_defaults.get(f.name()).cloned();
            let ok = matches!(
                (&default, kind),
                (None, _)
                    | (Some(DefaultValue::Empty), _)
                    | (Some(DefaultValue::Int64(_)), FeatureKind::Int64List)
                    | (Some(DefaultValue::Float(_)), FeatureKind::FloatList)
                    | (Some(DefaultValue::Bytes(_)), FeatureKind::BytesList)
            );
            if !ok {
                return Err(Error::Options(format!(
                    "null default {:?} for column '{}' does not match its kind {}",
                    default.as_ref().expect("some"),
                    f.name(),
                    kind.name()
                )));
            }
            // Int64List { packed: 0x0a <vl> varint }, FloatList { packed: 0x0a 0x04 f32 }.
            let i64_prefix = (0..=10usize)
                .map(|vl| scalar_prefix(&key_part, 0x1a, 2 + vl, &[0x0a, vl as u8]))
                .collect();
            let f32_prefix = scalar_prefix(&key_part, 0x12, 6, &[0x0a, 0x04]);
            plans.push(ColPlan {
                name: f.name().clone(),
                key_part,
                kind,
                default,
                i64_prefix,
                f32_prefix,
            });
        }
        Ok(ExampleEncoder {
            schema,
            plans,
            features: Vec::with_capacity(4096),
        })
    }

    /// The schema batches must have.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn views(&self, batch: &RecordBatch) -> Result<Vec<ColView>> {
        if batch.num_columns() != self.plans.len() {
            return Err(Error::Schema(format!(
                "batch has {} columns, encoder schema has {}",
                batch.num_columns(),
                self.plans.len()
            )));
        }
        let mut views = Vec::with_capacity(self.plans.len());
        for (i, plan) in self.plans.iter().enumerate() {
            let col = batch.column(i);
            let expected = self.schema.field(i).data_type();
            if col.data_type() != expected {
                return Err(Error::Schema(format!(
                    "column '{}' has type {} in the batch, {} in the encoder schema",
                    plan.name,
                    col.data_type(),
                    expected
                )));
            }
            views.push(col_view(col, &plan.name)?);
        }
        Ok(views)
    }

    /// Write the `Features` message body of `row` into `self.features`.
    #[inline]
    fn encode_features(&mut self, views: &[ColView], row: usize) {
        let out = &mut self.features;
        out.clear();
        for (plan, v) in self.plans.iter().zip(views) {
            let kp = &plan.key_part[..];
            if v.nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                match &plan.default {
                    None => {}
                    Some(DefaultValue::Int64(x)) => write_i64s(out, kp, std::slice::from_ref(x)),
                    Some(DefaultValue::Float(x)) => write_f32s(out, kp, std::slice::from_ref(x)),
                    Some(DefaultValue::Bytes(s)) => {
                        let l = s.len();
                        let list_len = 1 + varint_len(l as u64) + l;
                        entry_header(out, kp, 1 + varint_len(list_len as u64) + list_len);
                        out.push(0x0a);
                        put_varint(out, list_len as u64);
                        out.push(0x0a);
                        put_varint(out, l as u64);
                        out.extend_from_slice(s.as_bytes());
                    }
                    Some(DefaultValue::Empty) => write_empty(out, kp, plan.kind),
                }
                continue;
            }
            if let Offs::None = v.offs {
                match &v.leaf {
                    Leaf::I64(a) => {
                        let x = a.values()[row] as u64;
                        out.extend_from_slice(&plan.i64_prefix[varint_len(x)]);
                        put_varint(out, x);
                        continue;
                    }
                    Leaf::F32(a) => {
                        out.extend_from_slice(&plan.f32_prefix);
                        out.extend_from_slice(&a.values()[row].to_le_bytes());
                        continue;
                    }
                    _ => {}
                }
            }
            let (s, e) = v.range(row);
            match &v.leaf {
                Leaf::I64(a) => write_i64s(out, kp, &a.values()[s..e]),
                Leaf::F32(a) => write_f32s(out, kp, &a.values()[s..e]),
                leaf => write_bytes_range(out, kp, leaf, s, e),
            }
        }
    }

    /// Encode every row of `batch`, calling `sink` with each serialized Example.
    pub fn encode_batch_with(
        &mut self,
        batch: &RecordBatch,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let views = self.views(batch)?;
        let mut rec = Vec::with_capacity(1024);
        for row in 0..batch.num_rows() {
            self.encode_features(&views, row);
            rec.clear();
            rec.push(0x0a);
            put_varint(&mut rec, self.features.len() as u64);
            rec.extend_from_slice(&self.features);
            sink(&rec)?;
        }
        Ok(())
    }

    /// Encode every row of `batch` as a framed TFRecord (length, CRCs) appended to `out`.
    pub fn encode_batch_tfrecord(&mut self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<()> {
        let views = self.views(batch)?;
        for row in 0..batch.num_rows() {
            self.encode_features(&views, row);
            let f = self.features.len();
            let payload_len = 1 + varint_len(f as u64) + f;
            out.reserve(16 + payload_len);
            let len_bytes = (payload_len as u64).to_le_bytes();
            out.extend_from_slice(&len_bytes);
            out.extend_from_slice(&masked_crc32c(&len_bytes).to_le_bytes());
            let start = out.len();
            out.push(0x0a);
            put_varint(out, f as u64);
            out.extend_from_slice(&self.features);
            let crc = masked_crc32c(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        Ok(())
    }

    /// Encode every row into its own `Vec<u8>` (convenient, not the fast path).
    pub fn encode_batch(&mut self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let mut v = Vec::with_capacity(batch.num_rows());
        self.encode_batch_with(batch, |r| {
            v.push(r.to_vec());
            Ok(())
        })?;
        Ok(v)
    }
}

// ------------------------------------------------------------------------------------------
// Decoder
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Check {
    None,
    Range(i64, i64, &'static str),
    Utf8,
    FixedLen(usize),
}

struct DecCol {
    name: String,
    kind: FeatureKind,
    leaf_type: DataType,
    shape: Shape,
    nullable: bool,
    check: Check,
    validity: BooleanBufferBuilder,
    offsets: Vec<i32>,
    i64s: Vec<i64>,
    f32s: Vec<f32>,
    boffs: Vec<i32>,
    bdata: Vec<u8>,
    seen: u64,
}

fn leaf_check(dt: &DataType) -> Check {
    use DataType::*;
    match dt {
        Boolean => Check::Range(0, 1, "Boolean (0 or 1)"),
        Int8 => Check::Range(i8::MIN as i64, i8::MAX as i64, "Int8"),
        Int16 => Check::Range(i16::MIN as i64, i16::MAX as i64, "Int16"),
        Int32 => Check::Range(i32::MIN as i64, i32::MAX as i64, "Int32"),
        Date32 => Check::Range(i32::MIN as i64, i32::MAX as i64, "Date32"),
        Time32(_) => Check::Range(i32::MIN as i64, i32::MAX as i64, "Time32"),
        UInt8 => Check::Range(0, u8::MAX as i64, "UInt8"),
        UInt16 => Check::Range(0, u16::MAX as i64, "UInt16"),
        UInt32 => Check::Range(0, u32::MAX as i64, "UInt32"),
        UInt64 => Check::Range(0, i64::MAX, "UInt64"),
        Utf8 | LargeUtf8 | Utf8View => Check::Utf8,
        FixedSizeBinary(n) => Check::FixedLen(*n as usize),
        Dictionary(_, v) => leaf_check(v),
        _ => Check::None,
    }
}

type ColErr = String;

impl DecCol {
    fn new(field: &Field) -> Result<Self> {
        let (shape, leaf_type, kind) = column_shape(field)?;
        Ok(DecCol {
            name: field.name().clone(),
            kind,
            check: leaf_check(&leaf_type),
            leaf_type,
            shape,
            nullable: field.is_nullable(),
            validity: BooleanBufferBuilder::new(1024),
            offsets: vec![0],
            i64s: Vec::new(),
            f32s: Vec::new(),
            boffs: vec![0],
            bdata: Vec::new(),
            seen: 0,
        })
    }

    fn value_count(&self) -> usize {
        match self.kind {
            FeatureKind::Int64List => self.i64s.len(),
            FeatureKind::FloatList => self.f32s.len(),
            FeatureKind::BytesList => self.boffs.len() - 1,
        }
    }

    fn push_placeholder(&mut self) {
        match self.kind {
            FeatureKind::Int64List => self.i64s.push(0),
            FeatureKind::FloatList => self.f32s.push(0.0),
            FeatureKind::BytesList => {
                if let Check::FixedLen(n) = self.check {
                    self.bdata.resize(self.bdata.len() + n, 0);
                }
                self.boffs.push(self.bdata.len() as i32);
            }
        }
    }

    fn append_null(&mut self) {
        self.validity.append(false);
        match &self.shape {
            Shape::Scalar => self.push_placeholder(),
            Shape::List(_) | Shape::LargeList(_) => {
                let l = *self.offsets.last().expect("offsets start with 0");
                self.offsets.push(l);
            }
            Shape::Fixed(_, n) => {
                for _ in 0..*n {
                    self.push_placeholder();
                }
            }
        }
    }

    fn truncate(&mut self, rows: usize) {
        self.validity.truncate(rows);
        let vc = match &self.shape {
            Shape::Scalar => rows,
            Shape::List(_) | Shape::LargeList(_) => {
                self.offsets.truncate(rows + 1);
                self.offsets[rows] as usize
            }
            Shape::Fixed(_, n) => rows * *n as usize,
        };
        self.i64s.truncate(vc);
        self.f32s.truncate(vc);
        if self.boffs.len() > vc + 1 {
            self.boffs.truncate(vc + 1);
        }
        let b = self.boffs[self.boffs.len() - 1] as usize;
        self.bdata.truncate(b);
    }

    #[inline]
    fn push_i64(&mut self, v: i64) -> Result<(), ColErr> {
        if let Check::Range(lo, hi, what) = self.check
            && (v < lo || v > hi)
        {
            return Err(format!("value {v} out of range for {what}"));
        }
        self.i64s.push(v);
        Ok(())
    }

    #[inline]
    fn push_bytes(&mut self, b: &[u8]) -> Result<(), ColErr> {
        match self.check {
            Check::Utf8 => {
                if let Err(e) = std::str::from_utf8(b) {
                    return Err(format!(
                        "bytes value is not valid UTF-8 ({e}) for a string column"
                    ));
                }
            }
            Check::FixedLen(n) if b.len() != n => {
                return Err(format!(
                    "bytes value has {} bytes, FixedSizeBinary({n}) expected",
                    b.len()
                ));
            }
            _ => {}
        }
        self.bdata.extend_from_slice(b);
        let end = i32::try_from(self.bdata.len())
            .map_err(|_| "more than 2 GiB of bytes in one batch; use a smaller batch size")?;
        self.boffs.push(end);
        Ok(())
    }

    /// Append one serialized `Feature`.
    fn append_feature(&mut self, f: &[u8]) -> Result<(), ColErr> {
        // Find the (last) kind field set.
        let mut pos = 0;
        let mut kind: Option<(u64, usize, usize)> = None;
        while pos < f.len() {
            let fld =
                wire::next_field(f, &mut pos).map_err(|m| format!("malformed Feature: {m}"))?;
            if (1..=3).contains(&fld.number) {
                if fld.wire_type != WT_LEN {
                    return Err("malformed Feature: kind field is not length-delimited".into());
                }
                kind = Some((fld.number, fld.start, fld.end));
            }
        }
        let before = self.value_count();
        if let Some((num, s, e)) = kind {
            let found = match num {
                1 => FeatureKind::BytesList,
                2 => FeatureKind::FloatList,
                _ => FeatureKind::Int64List,
            };
            if found != self.kind {
                return Err(format!(
                    "wrong kind: expected {} (column type {}), found {}",
                    self.kind.name(),
                    self.leaf_type,
                    found.name()
                ));
            }
            let l = &f[s..e];
            let mut pos = 0;
            while pos < l.len() {
                let fld = wire::next_field(l, &mut pos)
                    .map_err(|m| format!("malformed {}: {m}", found.name()))?;
                if fld.number != 1 {
                    continue;
                }
                match (found, fld.wire_type) {
                    (FeatureKind::Int64List, WT_LEN) => {
                        let p = &l[fld.start..fld.end];
                        let mut q = 0;
                        while q < p.len() {
                            let v =
                                wire::get_varint(p, &mut q).ok_or("malformed packed int64_list")?;
                            self.push_i64(v as i64)?;
                        }
                    }
                    (FeatureKind::Int64List, WT_VARINT) => self.push_i64(fld.value as i64)?,
                    (FeatureKind::FloatList, WT_LEN) => {
                        let p = &l[fld.start..fld.end];
                        if !p.len().is_multiple_of(4) {
                            return Err(
                                "malformed packed float_list (length not a multiple of 4)".into()
                            );
                        }
                        self.f32s.extend(
                            p.chunks_exact(4)
                                .map(|c| f32::from_le_bytes(c.try_into().expect("4"))),
                        );
                    }
                    (FeatureKind::FloatList, WT_I32) => {
                        self.f32s.push(f32::from_bits(fld.value as u32))
                    }
                    (FeatureKind::BytesList, WT_LEN) => self.push_bytes(&l[fld.start..fld.end])?,
                    _ => {
                        return Err(format!(
                            "malformed {}: unexpected wire type {}",
                            found.name(),
                            fld.wire_type
                        ));
                    }
                }
            }
        }
        let n = self.value_count() - before;
        match &self.shape {
            Shape::Scalar => {
                if n != 1 {
                    return Err(format!(
                        "expected exactly 1 value for scalar column of type {}, found {n}",
                        self.leaf_type
                    ));
                }
            }
            Shape::List(_) | Shape::LargeList(_) => {
                let last = *self.offsets.last().expect("offsets start with 0") as usize;
                let end = i32::try_from(last + n).map_err(
                    |_| "more than 2^31 list values in one batch; use a smaller batch size",
                )?;
                self.offsets.push(end);
            }
            Shape::Fixed(_, k) => {
                if n != *k as usize {
                    return Err(format!(
                        "expected exactly {k} values (FixedSizeList), found {n}"
                    ));
                }
            }
        }
        self.validity.append(true);
        Ok(())
    }

    fn finish(&mut self, rows: usize) -> Result<ArrayRef> {
        let validity = self.validity.finish();
        let nulls = NullBuffer::new(validity);
        let nulls = if nulls.null_count() > 0 {
            Some(nulls)
        } else {
            None
        };
        let (leaf_nulls, outer_nulls) = match self.shape {
            Shape::Scalar => (nulls, None),
            _ => (None, nulls),
        };
        let ctx = format!("building column '{}'", self.name);
        let leaf: ArrayRef = match self.kind {
            FeatureKind::Int64List => {
                let a: ArrayRef = Arc::new(Int64Array::new(
                    ScalarBuffer::from(std::mem::take(&mut self.i64s)),
                    leaf_nulls,
                ));
                int_to_leaf(a, &self.leaf_type, &ctx)?
            }
            FeatureKind::FloatList => {
                let a: ArrayRef = Arc::new(Float32Array::new(
                    ScalarBuffer::from(std::mem::take(&mut self.f32s)),
                    leaf_nulls,
                ));
                match &self.leaf_type {
                    DataType::Float32 => a,
                    dt => cast(&a, dt).map_err(|e| Error::arrow(&ctx, e))?,
                }
            }
            FeatureKind::BytesList => {
                let offs = OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(
                    &mut self.boffs,
                    vec![0],
                )));
                let data = Buffer::from(std::mem::take(&mut self.bdata));
                bytes_to_leaf(offs, data, leaf_nulls, &self.leaf_type, &ctx)?
            }
        };
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        Ok(match &self.shape {
            Shape::Scalar => leaf,
            Shape::List(f) => Arc::new(
                ListArray::try_new(
                    f.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    leaf,
                    outer_nulls,
                )
                .map_err(|e| Error::arrow(&ctx, e))?,
            ),
            Shape::LargeList(f) => {
                let o: Vec<i64> = offsets.iter().map(|x| *x as i64).collect();
                Arc::new(
                    LargeListArray::try_new(
                        f.clone(),
                        OffsetBuffer::new(ScalarBuffer::from(o)),
                        leaf,
                        outer_nulls,
                    )
                    .map_err(|e| Error::arrow(&ctx, e))?,
                )
            }
            Shape::Fixed(f, n) => Arc::new(
                FixedSizeListArray::try_new_with_length(f.clone(), *n, leaf, outer_nulls, rows)
                    .map_err(|e| Error::arrow(&ctx, e))?,
            ),
        })
    }
}

fn int_to_leaf(a: ArrayRef, dt: &DataType, ctx: &str) -> Result<ArrayRef> {
    use DataType::*;
    match dt {
        Int64 => Ok(a),
        Timestamp(_, _) | Date64 | Duration(_) | Time64(_) => reinterpret(a.as_ref(), dt.clone()),
        Date32 | Time32(_) => {
            let i = cast(&a, &Int32).map_err(|e| Error::arrow(ctx, e))?;
            reinterpret(i.as_ref(), dt.clone())
        }
        Dictionary(_, v) => {
            let flat = int_to_leaf(a, v, ctx)?;
            cast(&flat, dt).map_err(|e| Error::arrow(ctx, e))
        }
        _ => cast(&a, dt).map_err(|e| Error::arrow(ctx, e)),
    }
}

fn bytes_to_leaf(
    offs: OffsetBuffer<i32>,
    data: Buffer,
    nulls: Option<NullBuffer>,
    dt: &DataType,
    ctx: &str,
) -> Result<ArrayRef> {
    use DataType::*;
    let ae = |e| Error::arrow(ctx, e);
    Ok(match dt {
        Binary => Arc::new(BinaryArray::try_new(offs, data, nulls).map_err(ae)?),
        Utf8 => Arc::new(StringArray::try_new(offs, data, nulls).map_err(ae)?),
        LargeUtf8 | Utf8View => {
            let s: ArrayRef = Arc::new(StringArray::try_new(offs, data, nulls).map_err(ae)?);
            cast(&s, dt).map_err(ae)?
        }
        LargeBinary | BinaryView => {
            let b: ArrayRef = Arc::new(BinaryArray::try_new(offs, data, nulls).map_err(ae)?);
            cast(&b, dt).map_err(ae)?
        }
        FixedSizeBinary(n) => {
            let len = offs.len() - 1;
            Arc::new(FixedSizeBinaryArray::try_new_with_len(*n, data, nulls, len).map_err(ae)?)
        }
        Dictionary(_, v) => {
            let flat = bytes_to_leaf(offs, data, nulls, v, ctx)?;
            cast(&flat, dt).map_err(ae)?
        }
        other => {
            return Err(Error::Schema(format!(
                "{ctx}: unexpected bytes leaf type {other}"
            )));
        }
    })
}

/// Decodes serialized `tf.train.Example`s into RecordBatches of a given schema.
///
/// Features not in the schema are ignored (like `tf.io.parse_example`). A missing feature is
/// null in a nullable column and an error in a non-nullable one.
pub struct ExampleDecoder {
    schema: SchemaRef,
    cols: Vec<DecCol>,
    lookup: HashMap<Box<[u8]>, usize>,
    rows: usize,
    record_index: u64,
    stamp: u64,
    source: String,
}

impl ExampleDecoder {
    /// A decoder producing batches of `schema` (fails on unsupported column types).
    pub fn new(schema: SchemaRef) -> Result<Self> {
        let mut cols = Vec::new();
        let mut lookup = HashMap::new();
        for (i, f) in schema.fields().iter().enumerate() {
            cols.push(DecCol::new(f)?);
            if lookup
                .insert(f.name().as_bytes().to_vec().into_boxed_slice(), i)
                .is_some()
            {
                return Err(Error::Schema(format!(
                    "duplicate column name '{}'",
                    f.name()
                )));
            }
        }
        Ok(ExampleDecoder {
            schema,
            cols,
            lookup,
            rows: 0,
            record_index: 0,
            stamp: 0,
            source: String::new(),
        })
    }

    /// Name the source (file / URL) in errors.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        let s = source.into();
        self.source = if s.is_empty() { s } else { format!("{s}: ") };
        self
    }

    /// Set the index reported for the next record (e.g. after skipping records elsewhere).
    pub fn set_record_index(&mut self, index: u64) {
        self.record_index = index;
    }

    /// The output schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows buffered for the next batch.
    pub fn buffered_rows(&self) -> usize {
        self.rows
    }

    fn err(&self, record: u64, feature: &str, message: impl Into<String>) -> Error {
        Error::Decode {
            source_name: self.source.clone(),
            record,
            feature: feature.to_string(),
            message: message.into(),
        }
    }

    /// Append one serialized Example. On error nothing of this record is kept and the decoder
    /// can continue with the next record.
    pub fn append(&mut self, record: &[u8]) -> Result<()> {
        let idx = self.record_index;
        self.record_index += 1;
        self.stamp += 1;
        match self.append_inner(record, idx) {
            Ok(()) => {
                self.rows += 1;
                Ok(())
            }
            Err(e) => {
                let rows = self.rows;
                for c in &mut self.cols {
                    c.truncate(rows);
                }
                Err(e)
            }
        }
    }

    fn append_inner(&mut self, rec: &[u8], idx: u64) -> Result<()> {
        let stamp = self.stamp;
        let mut guess = 0usize;
        let mut pos = 0;
        let source = &self.source;
        let malformed = |m: &str| Error::Decode {
            source_name: source.clone(),
            record: idx,
            feature: String::new(),
            message: format!("malformed Example: {m}"),
        };
        while pos < rec.len() {
            let fld = wire::next_field(rec, &mut pos).map_err(malformed)?;
            if fld.number != 1 || fld.wire_type != WT_LEN {
                continue;
            }
            let feats = &rec[fld.start..fld.end];
            let mut fp = 0;
            while fp < feats.len() {
                let entry = wire::next_field(feats, &mut fp).map_err(malformed)?;
                if entry.number != 1 || entry.wire_type != WT_LEN {
                    continue;
                }
                let e = &feats[entry.start..entry.end];
                let mut ep = 0;
                let mut key: &[u8] = &[];
                let mut val: &[u8] = &[];
                while ep < e.len() {
                    let kf = wire::next_field(e, &mut ep).map_err(malformed)?;
                    match (kf.number, kf.wire_type) {
                        (1, WT_LEN) => key = &e[kf.start..kf.end],
                        (2, WT_LEN) => val = &e[kf.start..kf.end],
                        _ => {}
                    }
                }
                let ci = if guess < self.cols.len() && self.cols[guess].name.as_bytes() == key {
                    guess
                } else {
                    match self.lookup.get(key) {
                        Some(&i) => i,
                        None => continue,
                    }
                };
                guess = ci + 1;
                let col = &mut self.cols[ci];
                if col.seen == stamp {
                    let name = col.name.clone();
                    return Err(self.err(idx, &name, "feature appears twice in one Example"));
                }
                col.seen = stamp;
                if let Err(m) = col.append_feature(val) {
                    let name = col.name.clone();
                    return Err(self.err(idx, &name, m));
                }
            }
        }
        for i in 0..self.cols.len() {
            let c = &mut self.cols[i];
            if c.seen != stamp {
                if c.nullable {
                    c.append_null();
                } else {
                    let name = c.name.clone();
                    let t = self.schema.field(i).data_type().to_string();
                    return Err(self.err(
                        idx,
                        &name,
                        format!("missing required feature (non-nullable column of type {t})"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Build a RecordBatch from the buffered rows and reset the buffers.
    pub fn finish_batch(&mut self) -> Result<RecordBatch> {
        let rows = self.rows;
        let mut arrays = Vec::with_capacity(self.cols.len());
        for c in &mut self.cols {
            arrays.push(c.finish(rows)?);
        }
        self.rows = 0;
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| Error::arrow("building decoded batch", e))
    }

    /// Decode a slice of serialized Examples into one batch (fails on the first bad record).
    pub fn decode<B: AsRef<[u8]>>(&mut self, records: &[B]) -> Result<RecordBatch> {
        for r in records {
            self.append(r.as_ref())?;
        }
        self.finish_batch()
    }
}

// ------------------------------------------------------------------------------------------
// Schema inference
// ------------------------------------------------------------------------------------------

#[derive(Default)]
struct Seen {
    kind: Option<FeatureKind>,
    first_record: usize,
    scalar: bool,
    utf8: bool,
}

/// Infer an Arrow schema from (up to) the first `n` serialized Examples.
///
/// `int64_list` -> Int64, `float_list` -> Float32, `bytes_list` -> Utf8 if every value seen is
/// valid UTF-8, else Binary; a feature with exactly one value in every record where it appears
/// is a scalar column, otherwise `List<item>`. Every inferred column is nullable (data after
/// the sample may lack a feature). Columns are in order of first appearance.
pub fn infer_schema<B: AsRef<[u8]>>(records: &[B], n: usize) -> Result<Schema> {
    let mut order: Vec<String> = Vec::new();
    let mut seen: HashMap<String, Seen> = HashMap::new();
    for (ri, r) in records.iter().take(n).enumerate() {
        let rec = r.as_ref();
        let ctx = format!("record {ri}");
        let perr = |m: &str| Error::Protobuf {
            context: ctx.clone(),
            message: m.to_string(),
        };
        let mut pos = 0;
        while pos < rec.len() {
            let fld = wire::next_field(rec, &mut pos).map_err(perr)?;
            if fld.number != 1 || fld.wire_type != WT_LEN {
                continue;
            }
            let feats = &rec[fld.start..fld.end];
            let mut fp = 0;
            while fp < feats.len() {
                let entry = wire::next_field(feats, &mut fp).map_err(perr)?;
                if entry.number != 1 || entry.wire_type != WT_LEN {
                    continue;
                }
                let e = &feats[entry.start..entry.end];
                let mut ep = 0;
                let mut key = String::new();
                let mut val: &[u8] = &[];
                while ep < e.len() {
                    let kf = wire::next_field(e, &mut ep).map_err(perr)?;
                    match (kf.number, kf.wire_type) {
                        (1, WT_LEN) => {
                            key = String::from_utf8_lossy(&e[kf.start..kf.end]).into_owned()
                        }
                        (2, WT_LEN) => val = &e[kf.start..kf.end],
                        _ => {}
                    }
                }
                let feature = <crate::example::Feature as prost::Message>::decode(val)
                    .map_err(|e| perr(&format!("feature '{key}': {e}")))?;
                use crate::example::feature::Kind;
                let (kind, count, utf8) = match &feature.kind {
                    Some(Kind::Int64List(l)) => (Some(FeatureKind::Int64List), l.value.len(), true),
                    Some(Kind::FloatList(l)) => (Some(FeatureKind::FloatList), l.value.len(), true),
                    Some(Kind::BytesList(l)) => (
                        Some(FeatureKind::BytesList),
                        l.value.len(),
                        l.value.iter().all(|b| std::str::from_utf8(b).is_ok()),
                    ),
                    None => (None, 0, true),
                };
                let s = seen.entry(key.clone()).or_insert_with(|| {
                    order.push(key.clone());
                    Seen {
                        kind: None,
                        first_record: ri,
                        scalar: true,
                        utf8: true,
                    }
                });
                if let Some(k) = kind {
                    match s.kind {
                        None => {
                            s.kind = Some(k);
                            s.first_record = ri;
                        }
                        Some(prev) if prev != k => {
                            return Err(Error::Schema(format!(
                                "feature '{key}' is {} in record {} but {} in record {ri}",
                                prev.name(),
                                s.first_record,
                                k.name()
                            )));
                        }
                        _ => {}
                    }
                }
                s.scalar &= count == 1;
                s.utf8 &= utf8;
            }
        }
    }
    let fields: Vec<Field> = order
        .iter()
        .map(|name| {
            let s = &seen[name];
            let leaf = match s.kind {
                Some(FeatureKind::FloatList) => DataType::Float32,
                Some(FeatureKind::BytesList) if s.utf8 => DataType::Utf8,
                Some(FeatureKind::BytesList) => DataType::Binary,
                _ => DataType::Int64,
            };
            let dt = if s.scalar && s.kind.is_some() {
                leaf
            } else {
                DataType::List(Arc::new(Field::new_list_field(leaf, true)))
            };
            Field::new(name, dt, true)
        })
        .collect();
    Ok(Schema::new(fields))
}

/// Encode `batch` into Examples and decode them back with the same schema: the values a
/// TFRecord copy of the batch yields (Float64 and decimals rounded through f32). Useful to
/// compare TFRecord output with Parquet output, which keeps full precision.
pub fn example_round_trip(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut enc = ExampleEncoder::new(batch.schema(), &EncodeOptions::default())?;
    let mut dec = ExampleDecoder::new(batch.schema())?;
    enc.encode_batch_with(batch, |r| dec.append(r))?;
    dec.finish_batch()
}
