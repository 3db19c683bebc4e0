//! Protobuf wire-format helpers shared by the hand-written Example encoder and decoder.

/// Number of bytes of the varint encoding of `v`.
#[inline(always)]
pub fn varint_len(v: u64) -> usize {
    // 1 + floor(log2(v|1)) / 7
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Append the varint encoding of `v`.
#[inline(always)]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    let mut tmp = [0u8; 10];
    let mut i = 0;
    while v >= 0x80 {
        tmp[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    tmp[i] = v as u8;
    out.extend_from_slice(&tmp[..=i]);
}

/// Read a varint at `*pos`, advancing it. `None` if truncated or longer than 10 bytes.
#[inline(always)]
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut result = 0u64;
    let mut shift = 0u32;
    let mut p = *pos;
    loop {
        let b = *buf.get(p)?;
        p += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        result |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            *pos = p;
            return Some(result);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
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

/// Standard base64 (RFC 4648, with padding).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            let mut p = 0;
            assert_eq!(get_varint(&b, &mut p), Some(v));
            assert_eq!(p, b.len());
        }
        let mut p = 0;
        assert_eq!(get_varint(&[0xff; 11], &mut p), None);
        assert_eq!(get_varint(&[0x80], &mut p), None);
    }

    #[test]
    fn base64_rfc() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
