//! Protobuf wire-format field scanner shared by the Example decoder and schema inference.
//!
//! Varints come from `prost::encoding` (`encode_varint`, `decode_varint`,
//! `encoded_len_varint`). The field scanner itself is hand-written because prost has no
//! zero-copy API that yields a field's number, wire type and payload *range* inside a borrowed
//! buffer: the decoder appends values straight from those ranges into Arrow buffers without
//! building per-record messages.

use prost::encoding::decode_varint;

/// Read a varint at `*pos`, advancing it. `None` if truncated or longer than 10 bytes
/// (`prost::encoding::decode_varint` over `buf[*pos..]`).
#[inline(always)]
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut rest = buf.get(*pos..)?;
    let v = decode_varint(&mut rest).ok()?;
    *pos = buf.len() - rest.len();
    Some(v)
}

/// Wire types.
pub const WT_VARINT: u8 = 0;
/// 64-bit fixed.
pub const WT_I64: u8 = 1;
/// Length-delimited.
pub const WT_LEN: u8 = 2;
/// 32-bit fixed.
pub const WT_I32: u8 = 5;

/// One parsed field: number, wire type and (for LEN) the payload range / (for VARINT) the value.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub number: u64,
    pub wire_type: u8,
    /// VARINT: the value; I32/I64: the raw little-endian bits; LEN: unused (see `start..end`).
    pub value: u64,
    pub start: usize,
    pub end: usize,
}

/// Read the next field of a message at `*pos` (bounded by `buf.len()`).
/// Errors are static strings describing the malformation.
#[inline(always)]
pub fn next_field(buf: &[u8], pos: &mut usize) -> Result<Field, &'static str> {
    let key = get_varint(buf, pos).ok_or("truncated or overlong field key")?;
    let number = key >> 3;
    let wire_type = (key & 7) as u8;
    if number == 0 {
        return Err("field number 0");
    }
    match wire_type {
        WT_VARINT => {
            let v = get_varint(buf, pos).ok_or("truncated varint")?;
            Ok(Field {
                number,
                wire_type,
                value: v,
                start: *pos,
                end: *pos,
            })
        }
        WT_I64 => {
            let s = *pos;
            let b = buf.get(s..s + 8).ok_or("truncated fixed64")?;
            *pos = s + 8;
            Ok(Field {
                number,
                wire_type,
                value: u64::from_le_bytes(b.try_into().expect("8")),
                start: s,
                end: s + 8,
            })
        }
        WT_LEN => {
            let len = get_varint(buf, pos).ok_or("truncated length")?;
            let s = *pos;
            let e = s
                .checked_add(usize::try_from(len).map_err(|_| "length too large")?)
                .ok_or("length too large")?;
            if e > buf.len() {
                return Err("length-delimited field runs past the end of its message");
            }
            *pos = e;
            Ok(Field {
                number,
                wire_type,
                value: len,
                start: s,
                end: e,
            })
        }
        WT_I32 => {
            let s = *pos;
            let b = buf.get(s..s + 4).ok_or("truncated fixed32")?;
            *pos = s + 4;
            Ok(Field {
                number,
                wire_type,
                value: u32::from_le_bytes(b.try_into().expect("4")) as u64,
                start: s,
                end: s + 4,
            })
        }
        3 | 4 => Err("groups are not supported"),
        _ => Err("invalid wire type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::encoding::{encode_varint, encoded_len_varint};

    #[test]
    fn varints() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            u32::MAX as u64,
            u64::MAX,
            (-1i64) as u64,
        ] {
            let mut b = Vec::new();
            encode_varint(v, &mut b);
            assert_eq!(b.len(), encoded_len_varint(v), "{v}");
            let mut p = 0;
            assert_eq!(get_varint(&b, &mut p), Some(v));
            assert_eq!(p, b.len());
            // Not at the start of the buffer, with bytes after it.
            let mut c = vec![0x96, 0x01];
            c.extend_from_slice(&b);
            c.push(0x05);
            let mut p = 2;
            assert_eq!(get_varint(&c, &mut p), Some(v));
            assert_eq!(p, 2 + b.len());
        }
        let mut p = 0;
        assert_eq!(get_varint(&[0xff; 11], &mut p), None);
        assert_eq!(get_varint(&[0x80], &mut p), None);
        // The 10th byte may only carry bit 63.
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get_varint(&over, &mut p), None);
        assert_eq!(p, 0);
        assert_eq!(get_varint(&[], &mut p), None);
        let mut p = 5;
        assert_eq!(get_varint(&[1], &mut p), None);
    }
}
