//! Serialized `tf.train.Example` -> Arrow: [`ExampleDecoder`] scans Examples with the
//! [`crate::wire`] field scanner and appends values into per-column buffers, then builds Arrow
//! arrays of the target schema. Records that do not fit are reported with their index and the
//! feature name and leave the decoder's buffers untouched (the caller may skip them and
//! continue).

use std::collections::HashMap;
use std::sync::Arc;

use crate::codec::cast_strict as cast;
use arrow::array::{
    ArrayRef, BinaryArray, BooleanBufferBuilder, FixedSizeBinaryArray, FixedSizeListArray,
    Float32Array, Int64Array, LargeListArray, ListArray, StringArray,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use super::mapping::{FeatureKind, Shape, column_shape, reinterpret};
use crate::error::{Error, Result};
use crate::wire::{self, WT_I32, WT_LEN, WT_VARINT};

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
    /// The record stamp this column was last seen in.
    seen: u64,
    /// Byte range of its `Feature` in the current record (the last occurrence: protobuf map
    /// semantics, as TensorFlow decodes a key present twice).
    value: (usize, usize),
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
            value: (0, 0),
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
                let base = fld.start + entry.start;
                let mut val = (base, base);
                while ep < e.len() {
                    let kf = wire::next_field(e, &mut ep).map_err(malformed)?;
                    match (kf.number, kf.wire_type) {
                        (1, WT_LEN) => key = &e[kf.start..kf.end],
                        (2, WT_LEN) => val = (base + kf.start, base + kf.end),
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
                // A key present twice: the last value wins (protobuf map semantics, as in
                // TensorFlow's parser and `kiln inspect`).
                let col = &mut self.cols[ci];
                col.seen = stamp;
                col.value = val;
            }
        }
        for i in 0..self.cols.len() {
            let c = &mut self.cols[i];
            if c.seen == stamp {
                if let Err(m) = c.append_feature(&rec[c.value.0..c.value.1]) {
                    let name = c.name.clone();
                    return Err(self.err(idx, &name, m));
                }
            } else {
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
