//! Schema inference: an Arrow schema from sample serialized Examples ([`infer_schema`]).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};

use super::mapping::FeatureKind;
use crate::error::{Error, Result};
use crate::wire::{self, WT_LEN};

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
