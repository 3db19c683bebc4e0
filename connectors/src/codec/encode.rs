//! Arrow -> serialized `tf.train.Example`: [`ExampleEncoder`] writes the protobuf bytes of each
//! row straight from the Arrow columns (precomputed key prefixes, exact lengths, varints into
//! one reused buffer) and can frame them as TFRecords in the same pass.

use crate::codec::cast_strict as cast;
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, FixedSizeBinaryArray,
    FixedSizeListArray, Float32Array, Int64Array, LargeBinaryArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use prost::encoding::{encode_varint, encoded_len_varint};

use super::mapping::{
    DefaultValue, EncodeOptions, FeatureKind, column_shape, reinterpret, unsupported_hint,
};
use crate::error::{Error, Result};
use crate::tfrecord::masked_crc32c;

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
    let feature_len = 1 + encoded_len_varint(list_len as u64) + list_len;
    let mut v = Vec::new();
    entry_header(&mut v, key_part, feature_len);
    v.push(kind_tag);
    encode_varint(list_len as u64, &mut v);
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
    let entry_len = key_part.len() + encoded_len_varint(feature_len as u64) + feature_len;
    out.push(0x0a);
    encode_varint(entry_len as u64, out);
    out.extend_from_slice(key_part);
    encode_varint(feature_len as u64, out);
}

#[inline(always)]
fn write_i64s(out: &mut Vec<u8>, key_part: &[u8], vals: &[i64]) {
    let mut packed = 0usize;
    for v in vals {
        packed += encoded_len_varint(*v as u64);
    }
    let list_len = if vals.is_empty() {
        0
    } else {
        1 + encoded_len_varint(packed as u64) + packed
    };
    let feature_len = 1 + encoded_len_varint(list_len as u64) + list_len;
    entry_header(out, key_part, feature_len);
    out.push(0x1a);
    encode_varint(list_len as u64, out);
    if !vals.is_empty() {
        out.push(0x0a);
        encode_varint(packed as u64, out);
        for v in vals {
            encode_varint(*v as u64, out);
        }
    }
}

#[inline(always)]
fn write_f32s(out: &mut Vec<u8>, key_part: &[u8], vals: &[f32]) {
    let packed = 4 * vals.len();
    let list_len = if vals.is_empty() {
        0
    } else {
        1 + encoded_len_varint(packed as u64) + packed
    };
    let feature_len = 1 + encoded_len_varint(list_len as u64) + list_len;
    entry_header(out, key_part, feature_len);
    out.push(0x12);
    encode_varint(list_len as u64, out);
    if !vals.is_empty() {
        out.push(0x0a);
        encode_varint(packed as u64, out);
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
        list_len += 1 + encoded_len_varint(n as u64) + n;
    }
    let feature_len = 1 + encoded_len_varint(list_len as u64) + list_len;
    entry_header(out, key_part, feature_len);
    out.push(0x0a);
    encode_varint(list_len as u64, out);
    for i in s..e {
        let b = leaf.bytes(i);
        out.push(0x0a);
        encode_varint(b.len() as u64, out);
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
            encode_varint(f.name().len() as u64, &mut key_part);
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
                        let list_len = 1 + encoded_len_varint(l as u64) + l;
                        entry_header(out, kp, 1 + encoded_len_varint(list_len as u64) + list_len);
                        out.push(0x0a);
                        encode_varint(list_len as u64, out);
                        out.push(0x0a);
                        encode_varint(l as u64, out);
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
                        out.extend_from_slice(&plan.i64_prefix[encoded_len_varint(x)]);
                        encode_varint(x, out);
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
            encode_varint(self.features.len() as u64, &mut rec);
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
            let payload_len = 1 + encoded_len_varint(f as u64) + f;
            out.reserve(16 + payload_len);
            let len_bytes = (payload_len as u64).to_le_bytes();
            out.extend_from_slice(&len_bytes);
            out.extend_from_slice(&masked_crc32c(&len_bytes).to_le_bytes());
            let start = out.len();
            out.push(0x0a);
            encode_varint(f as u64, out);
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
