//! Row -> shard assignment: `xxh3_64(canonical key bytes) % n`.
//!
//! Canonical bytes: the i64 little-endian bytes for integer keys (Int8..Int64, UInt8..UInt32,
//! and UInt64 values up to i64::MAX; also Date/Timestamp/Duration keys by their integer value),
//! the UTF-8 bytes for string keys, the raw bytes for binary keys. **A null key goes to shard
//! 0** (deterministic; nulls are not an error so that a nullable key column still writes).
//! This is Kiln's own hash, so the library writer, DataFusion and Ballista agree.

use crate::codec::cast_strict as cast;
use arrow::array::{Array, AsArray, UInt32Array};
use arrow::datatypes::{DataType, Int64Type};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};

/// Shard of an integer key.
#[inline]
pub fn shard_of_i64(key: i64, n: u32) -> u32 {
    (xxh3_64(&key.to_le_bytes()) % n.max(1) as u64) as u32
}

/// Shard of a string / bytes key.
#[inline]
pub fn shard_of_bytes(key: &[u8], n: u32) -> u32 {
    (xxh3_64(key) % n.max(1) as u64) as u32
}

/// Key types accepted by [`shard_ids`].
pub fn is_supported_key_type(dt: &DataType) -> bool {
    use DataType::*;
    matches!(
        dt,
        Int8 | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Date32
            | Date64
            | Timestamp(_, _)
            | Duration(_)
            | Utf8
            | LargeUtf8
            | Utf8View
            | Binary
            | LargeBinary
            | BinaryView
    )
}

/// The key column as i64 values (integers and temporal types), checking UInt64 range.
pub(crate) fn key_as_i64(key: &dyn Array) -> Result<Option<arrow::array::Int64Array>> {
    use DataType::*;
    let dt = key.data_type();
    let as_int = match dt {
        Int64 => return Ok(Some(key.as_primitive::<Int64Type>().clone())),
        Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 => DataType::Int64,
        UInt64 => {
            let u = key.as_primitive::<arrow::datatypes::UInt64Type>();
            if let Some(row) = u
                .iter()
                .position(|v| v.is_some_and(|v| v > i64::MAX as u64))
            {
                return Err(Error::Encode {
                    column: "<key>".into(),
                    row,
                    message: format!("UInt64 key {} exceeds i64::MAX", u.value(row)),
                });
            }
            DataType::Int64
        }
        Date32 | Date64 | Timestamp(_, _) | Duration(_) => {
            // Temporal values hash by their integer representation.
            let width = if matches!(dt, Date32) { Int32 } else { Int64 };
            let data = key
                .to_data()
                .into_builder()
                .data_type(width)
                .build()
                .map_err(|e| Error::arrow("key column", e))?;
            let a = arrow::array::make_array(data);
            let c = cast(&a, &Int64).map_err(|e| Error::arrow("key column", e))?;
            return Ok(Some(c.as_primitive::<Int64Type>().clone()));
        }
        _ => return Ok(None),
    };
    let c = cast(key, &as_int).map_err(|e| Error::arrow("key column", e))?;
    Ok(Some(c.as_primitive::<Int64Type>().clone()))
}

/// Shard id of every row of `key` (int, temporal, string or binary column); null -> 0.
pub fn shard_ids(key: &dyn Array, n: u32) -> Result<UInt32Array> {
    if n == 0 {
        return Err(Error::Options("num_shards must be > 0".into()));
    }
    if let Some(ints) = key_as_i64(key)? {
        return Ok(ints
            .iter()
            .map(|v| Some(v.map_or(0, |v| shard_of_i64(v, n))))
            .collect());
    }
    let ids: UInt32Array = match key.data_type() {
        DataType::Utf8 => key
            .as_string::<i32>()
            .iter()
            .map(|v| Some(v.map_or(0, |v| shard_of_bytes(v.as_bytes(), n))))
            .collect(),
        DataType::LargeUtf8 => key
            .as_string::<i64>()
            .iter()
            .map(|v| Some(v.map_or(0, |v| shard_of_bytes(v.as_bytes(), n))))
            .collect(),
        DataType::Utf8View => key
            .as_string_view()
            .iter()
            .map(|v| Some(v.map_or(0, |v| shard_of_bytes(v.as_bytes(), n))))
            .collect(),
        DataType::Binary => key
            .as_binary::<i32>()
            .iter()
            .map(|v| Some(v.map_or(0, |v| shard_of_bytes(v, n))))
            .collect(),
        DataType::LargeBinary => key
            .as_binary::<i64>()
            .iter()
            .map(|v| Some(v.map_or(0, |v| shard_of_bytes(v, n))))
            .collect(),
        DataType::BinaryView => key
            .as_binary_view()
            .iter()
            .map(|v| Some(v.map_or(0, |v| shard_of_bytes(v, n))))
            .collect(),
        other => {
            return Err(Error::Options(format!(
                "key column type {other} is not supported for sharding (use an integer, temporal, string or binary column)"
            )));
        }
    };
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray};

    #[test]
    fn int_widths_agree_and_strings_hash_bytes() {
        let a = Int64Array::from(vec![Some(1), Some(-5), None, Some(1 << 40)]);
        let b = Int32Array::from(vec![Some(1), Some(-5), None, Some(7)]);
        let ia = shard_ids(&a, 16).unwrap();
        let ib = shard_ids(&b, 16).unwrap();
        assert_eq!(ia.value(0), ib.value(0));
        assert_eq!(ia.value(1), ib.value(1));
        assert_eq!(ia.value(2), 0);
        assert_eq!(ia.value(0), shard_of_i64(1, 16));
        let s = StringArray::from(vec!["abc"]);
        assert_eq!(
            shard_ids(&s, 7).unwrap().value(0),
            shard_of_bytes(b"abc", 7)
        );
        // Fixed value: the assignment must never change between releases.
        assert_eq!(xxh3_64(&1i64.to_le_bytes()), 3_439_722_301_264_460_078);
    }
}
