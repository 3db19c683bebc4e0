//! TFRecord framing, byte-for-byte as TensorFlow writes it.
//!
//! Each record is
//! ```text
//! u64 little-endian  length
//! u32 little-endian  masked_crc32c(length bytes)
//! [u8; length]       payload
//! u32 little-endian  masked_crc32c(payload)
//! ```
//! with `mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping). The whole stream may
//! be wrapped in GZIP or ZLIB ([`Compression`]), like `tf.io.TFRecordOptions(compression_type=..)`.
//!
//! Reading is streaming with constant memory: [`TfRecordReader`] reuses one payload buffer.
//! Errors name the source, the 0-based record index and a byte offset in the *uncompressed*
//! stream, exactly where TensorFlow reports it ("corrupted record at N"): the record start for
//! problems with the 12-byte header (length + length CRC), the payload offset (record start +
//! 12) for a payload CRC mismatch or a cut payload. Errors also carry the record start.
//!
//! ## Corrupt data and `skip_corrupt`
//! * data CRC mismatch: the length is trustworthy, so with `skip_corrupt` the record is skipped,
//!   reported in [`TfRecordReader::skipped`], and reading continues with the next record;
//! * length CRC mismatch: the length cannot be trusted and there is no reliable way to find the
//!   next record boundary, so (like TensorFlow) reading stops; with `skip_corrupt` the rest of
//!   the stream is reported as one skipped entry and iteration ends without an error;
//! * truncation (stream ends inside a record): with `skip_corrupt` the partial record is reported
//!   as skipped and iteration ends.

use std::io::{self, BufRead, BufReader, Read, Write};

use flate2::read::{MultiGzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};

use crate::error::{Error, Result};

const MASK_DELTA: u32 = 0xa282_ead8;

/// TensorFlow's masked CRC32C.
#[inline]
pub fn masked_crc32c(data: &[u8]) -> u32 {
    mask(crc32c::crc32c(data))
}

#[inline]
fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Stream compression of a TFRecord file (TensorFlow's `compression_type`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Plain framing (`compression_type=""`).
    #[default]
    None,
    /// GZIP stream (`compression_type="GZIP"`).
    Gzip,
    /// ZLIB stream (`compression_type="ZLIB"`).
    Zlib,
}

impl Compression {
    /// Every stream compression.
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Gzip, Compression::Zlib];

    /// Kiln's name, as in manifests and job specs (the serde name): `none`, `gzip`, `zlib`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zlib => "zlib",
        }
    }

    /// Guess from a file name: `.gz` / `.gzip` -> Gzip, `.zz` / `.zlib` -> Zlib, else None.
    /// (TensorFlow itself does not look at names; Kiln writes `.tfrecord.gz` / `.tfrecord.zz`.)
    pub fn from_path(path: &str) -> Compression {
        let p = path.to_ascii_lowercase();
        if p.ends_with(".gz") || p.ends_with(".gzip") {
            Compression::Gzip
        } else if p.ends_with(".zz") || p.ends_with(".zlib") {
            Compression::Zlib
        } else {
            Compression::None
        }
    }

    /// Detect from the first bytes of a file (at least 12 are needed to recognise plain framing):
    /// a valid length CRC means plain; gzip magic `1f 8b` means Gzip; a valid zlib header means
    /// Zlib. Returns `None` if nothing matches.
    pub fn sniff(prefix: &[u8]) -> Option<Compression> {
        if prefix.is_empty() {
            return Some(Compression::None);
        }
        if prefix.len() >= 12 {
            let stored = u32::from_le_bytes(prefix[8..12].try_into().expect("4 bytes"));
            if masked_crc32c(&prefix[..8]) == stored {
                return Some(Compression::None);
            }
        }
        if prefix.len() >= 2 {
            if prefix[0] == 0x1f && prefix[1] == 0x8b {
                return Some(Compression::Gzip);
            }
            let (b0, b1) = (prefix[0] as u16, prefix[1] as u16);
            if b0 & 0x0f == 8 && (b0 >> 4) <= 7 && (b0 * 256 + b1) % 31 == 0 {
                return Some(Compression::Zlib);
            }
        }
        None
    }

    /// TensorFlow's name: `""`, `"GZIP"` or `"ZLIB"`.
    pub fn tf_name(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => "GZIP",
            Compression::Zlib => "ZLIB",
        }
    }

    /// File name suffix Kiln uses after `.tfrecord`: `""`, `".gz"`, `".zz"`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zlib => ".zz",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Compression {
    type Err = Error;
    /// [`Compression::name`]: `none`, `gzip` or `zlib`; anything else is
    /// [`Error::UnknownValue`] (never a fallback).
    fn from_str(s: &str) -> Result<Self> {
        Compression::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| Error::unknown("TFRecord compression", s, "none, gzip, zlib"))
    }
}

/// Append one framed record (header, payload, footer) to `out`.
#[inline]
pub fn frame_record(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u64).to_le_bytes();
    out.reserve(16 + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
}

/// The DEFLATE level TFRecord writers use unless told otherwise: zlib's default, what
/// TensorFlow's `TFRecordOptions` uses.
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 6;

/// A writer that optionally compresses (GZIP / ZLIB at a DEFLATE level 0..=9, deterministic
/// output: the gzip header carries no timestamp or file name).
pub enum CompressWriter<W: Write> {
    /// No compression.
    None(W),
    /// GZIP.
    Gzip(GzEncoder<W>),
    /// ZLIB.
    Zlib(ZlibEncoder<W>),
}

impl<W: Write> CompressWriter<W> {
    /// Wrap `w` (level [`DEFAULT_COMPRESSION_LEVEL`]).
    pub fn new(w: W, compression: Compression) -> Self {
        Self::with_level(w, compression, DEFAULT_COMPRESSION_LEVEL)
    }

    /// Wrap `w`, compressing at DEFLATE `level` (0 = stored .. 9 = smallest; clamped to 9).
    pub fn with_level(w: W, compression: Compression, level: u32) -> Self {
        let level = flate2::Compression::new(level.min(9));
        match compression {
            Compression::None => CompressWriter::None(w),
            Compression::Gzip => CompressWriter::Gzip(GzEncoder::new(w, level)),
            Compression::Zlib => CompressWriter::Zlib(ZlibEncoder::new(w, level)),
        }
    }

    /// The underlying writer (compressed bytes so far; for a `Vec<u8>` sink it may be drained).
    pub fn get_mut(&mut self) -> &mut W {
        match self {
            CompressWriter::None(w) => w,
            CompressWriter::Gzip(w) => w.get_mut(),
            CompressWriter::Zlib(w) => w.get_mut(),
        }
    }

    /// The underlying writer, read-only.
    pub fn get_ref(&self) -> &W {
        match self {
            CompressWriter::None(w) => w,
            CompressWriter::Gzip(w) => w.get_ref(),
            CompressWriter::Zlib(w) => w.get_ref(),
        }
    }

    /// Finish the compressed stream and return the underlying writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            CompressWriter::None(w) => Ok(w),
            CompressWriter::Gzip(w) => w.finish(),
            CompressWriter::Zlib(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for CompressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            CompressWriter::None(w) => w.write(buf),
            CompressWriter::Gzip(w) => w.write(buf),
            CompressWriter::Zlib(w) => w.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            CompressWriter::None(w) => w.write_all(buf),
            CompressWriter::Gzip(w) => w.write_all(buf),
            CompressWriter::Zlib(w) => w.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            CompressWriter::None(w) => w.flush(),
            CompressWriter::Gzip(w) => w.flush(),
            CompressWriter::Zlib(w) => w.flush(),
        }
    }
}

/// Streaming TFRecord writer.
pub struct TfRecordWriter<W: Write> {
    out: CompressWriter<W>,
    records: u64,
    uncompressed_bytes: u64,
}

impl<W: Write> TfRecordWriter<W> {
    /// A writer over `w` with the given stream compression.
    pub fn new(w: W, compression: Compression) -> Self {
        Self::with_level(w, compression, DEFAULT_COMPRESSION_LEVEL)
    }

    /// A writer compressing at DEFLATE `level` (0..=9).
    pub fn with_level(w: W, compression: Compression, level: u32) -> Self {
        TfRecordWriter {
            out: CompressWriter::with_level(w, compression, level),
            records: 0,
            uncompressed_bytes: 0,
        }
    }

    /// Write one record. No allocation: the 12-byte header lives on the stack.
    pub fn write_record(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut header = [0u8; 12];
        header[..8].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        let crc = masked_crc32c(&header[..8]);
        header[8..].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(payload)?;
        self.out.write_all(&masked_crc32c(payload).to_le_bytes())?;
        self.records += 1;
        self.uncompressed_bytes += 16 + payload.len() as u64;
        Ok(())
    }

    /// Write bytes that are already framed (e.g. from [`frame_record`] or the Example encoder).
    pub fn write_framed(&mut self, framed: &[u8], records: u64) -> io::Result<()> {
        self.out.write_all(framed)?;
        self.records += records;
        self.uncompressed_bytes += framed.len() as u64;
        Ok(())
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Uncompressed bytes written so far.
    pub fn uncompressed_bytes(&self) -> u64 {
        self.uncompressed_bytes
    }

    /// The underlying (compressed) writer.
    pub fn get_mut(&mut self) -> &mut W {
        self.out.get_mut()
    }

    /// Finish the stream (writes the gzip/zlib trailer) and return the underlying writer.
    pub fn finish(self) -> io::Result<W> {
        let mut w = self.out.finish()?;
        w.flush()?;
        Ok(w)
    }
}

/// Decompressing reader over a compressed TFRecord stream.
pub enum DecompressReader<R: Read> {
    /// Plain.
    None(R),
    /// GZIP (multi-member).
    Gzip(MultiGzDecoder<R>),
    /// ZLIB.
    Zlib(ZlibDecoder<R>),
}

impl<R: Read> DecompressReader<R> {
    /// Wrap `r`.
    pub fn new(r: R, compression: Compression) -> Self {
        match compression {
            Compression::None => DecompressReader::None(r),
            Compression::Gzip => DecompressReader::Gzip(MultiGzDecoder::new(r)),
            Compression::Zlib => DecompressReader::Zlib(ZlibDecoder::new(r)),
        }
    }
}

impl<R: Read> Read for DecompressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            DecompressReader::None(r) => r.read(buf),
            DecompressReader::Gzip(r) => r.read(buf),
            DecompressReader::Zlib(r) => r.read(buf),
        }
    }
}

/// Why a record was skipped under `skip_corrupt`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Payload CRC mismatch; the record was skipped and reading continued.
    DataCrcMismatch,
    /// Length CRC mismatch; the rest of the stream was abandoned.
    LengthCrcMismatch,
    /// The stream ended inside this record.
    Truncated,
}

/// One record skipped under `skip_corrupt`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedRecord {
    /// 0-based record index.
    pub index: u64,
    /// Byte offset as TensorFlow reports it (see the module docs).
    pub offset: u64,
    /// Byte offset of the record start in the uncompressed stream.
    pub record_start: u64,
    /// Why.
    pub reason: SkipReason,
}

/// Streaming TFRecord reader with constant memory (one reused payload buffer).
///
/// Use [`next_record`](Self::next_record) for zero-copy access, or iterate for owned records.
pub struct TfRecordReader<R: Read> {
    inner: BufReader<DecompressReader<R>>,
    source_name: String,
    index: u64,
    offset: u64,
    buf: Vec<u8>,
    skip_corrupt: bool,
    skipped: Vec<SkippedRecord>,
    done: bool,
}

impl<R: Read> TfRecordReader<R> {
    /// A reader over `r`; `source_name` (file name or URL) appears in every error.
    pub fn new(r: R, compression: Compression, source_name: impl Into<String>) -> Self {
        TfRecordReader {
            inner: BufReader::with_capacity(256 * 1024, DecompressReader::new(r, compression)),
            source_name: source_name.into(),
            index: 0,
            offset: 0,
            buf: Vec::new(),
            skip_corrupt: false,
            skipped: Vec::new(),
            done: false,
        }
    }

    /// Skip corrupt records instead of failing (see the module docs for what is skippable).
    pub fn with_skip_corrupt(mut self, skip: bool) -> Self {
        self.skip_corrupt = skip;
        self
    }

    /// Records skipped so far (only with `skip_corrupt`).
    pub fn skipped(&self) -> &[SkippedRecord] {
        &self.skipped
    }

    /// Index of the next record to be returned (= records consumed so far, skipped included).
    pub fn record_index(&self) -> u64 {
        self.index
    }

    /// Offset in the uncompressed stream of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The source name given at construction.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.done = true;
                    return Err(Error::io(
                        format!(
                            "{}: reading record {} at byte offset {}",
                            self.source_name, self.index, self.offset
                        ),
                        e,
                    ));
                }
            }
        }
        Ok(n)
    }

    fn truncated(&mut self, in_payload: bool, detail: String) -> Result<Option<()>> {
        self.done = true;
        let offset = self.offset + if in_payload { 12 } else { 0 };
        if self.skip_corrupt {
            self.skipped.push(SkippedRecord {
                index: self.index,
                offset,
                record_start: self.offset,
                reason: SkipReason::Truncated,
            });
            return Ok(None);
        }
        Err(Error::Truncated {
            source_name: self.source_name.clone(),
            index: self.index,
            offset,
            record_start: self.offset,
            detail,
        })
    }

    /// Read the next record into the internal buffer. `Ok(None)` at the end of the stream.
    /// After an error the reader is finished (it never resynchronises on its own).
    fn advance(&mut self) -> Result<Option<()>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let mut header = [0u8; 12];
            let n = self.read_full(&mut header)?;
            if n == 0 {
                self.done = true;
                return Ok(None);
            }
            if n < 12 {
                return self.truncated(false, format!("only {n} of 12 header bytes"));
            }
            let len = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
            let stored = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
            let computed = masked_crc32c(&header[..8]);
            if stored != computed {
                self.done = true;
                if self.skip_corrupt {
                    self.skipped.push(SkippedRecord {
                        index: self.index,
                        offset: self.offset,
                        record_start: self.offset,
                        reason: SkipReason::LengthCrcMismatch,
                    });
                    return Ok(None);
                }
                return Err(Error::LengthCrcMismatch {
                    source_name: self.source_name.clone(),
                    index: self.index,
                    offset: self.offset,
                    stored,
                    computed,
                });
            }
            // Grow gradually: a huge (but CRC-valid) length on a short stream must not allocate it.
            self.buf.clear();
            self.buf.reserve(len.min(64 << 20) as usize);
            let got = {
                let mut take = (&mut self.inner).take(len);
                match take.read_to_end(&mut self.buf) {
                    Ok(n) => n as u64,
                    Err(e) => {
                        self.done = true;
                        return Err(Error::io(
                            format!(
                                "{}: reading record {} at byte offset {}",
                                self.source_name, self.index, self.offset
                            ),
                            e,
                        ));
                    }
                }
            };
            if got < len {
                return self.truncated(true, format!("payload has {got} of {len} bytes"));
            }
            let mut footer = [0u8; 4];
            let n = self.read_full(&mut footer)?;
            if n < 4 {
                return self.truncated(true, format!("only {n} of 4 payload CRC bytes"));
            }
            let stored = u32::from_le_bytes(footer);
            let computed = masked_crc32c(&self.buf);
            let start = self.offset;
            let index = self.index;
            self.index += 1;
            self.offset += 16 + len;
            if stored != computed {
                if self.skip_corrupt {
                    self.skipped.push(SkippedRecord {
                        index,
                        offset: start + 12,
                        record_start: start,
                        reason: SkipReason::DataCrcMismatch,
                    });
                    continue;
                }
                self.done = true;
                return Err(Error::DataCrcMismatch {
                    source_name: self.source_name.clone(),
                    index,
                    offset: start + 12,
                    record_start: start,
                    length: len,
                    stored,
                    computed,
                });
            }
            return Ok(Some(()));
        }
    }

    /// The next record's payload, borrowed from the reader's reused buffer.
    pub fn next_record(&mut self) -> Result<Option<&[u8]>> {
        match self.advance()? {
            Some(()) => Ok(Some(&self.buf)),
            None => Ok(None),
        }
    }

    /// True when the underlying stream has no more bytes buffered or to read (cheap check).
    pub fn at_eof(&mut self) -> Result<bool> {
        if self.done {
            return Ok(true);
        }
        match self.inner.fill_buf() {
            Ok(b) => Ok(b.is_empty()),
            Err(e) => Err(Error::io(format!("{}: reading", self.source_name), e)),
        }
    }
}

impl<R: Read> Iterator for TfRecordReader<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.advance() {
            Ok(Some(())) => Some(Ok(self.buf.clone())),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_masked_crc() {
        // TF's crc32c_test: Mask/Unmask round-trip and a known CRC32C value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let c = crc32c::crc32c(b"foo");
        assert_ne!(mask(c), c);
    }

    #[test]
    fn roundtrip_all_compressions() {
        for c in [Compression::None, Compression::Gzip, Compression::Zlib] {
            let mut w = TfRecordWriter::new(Vec::new(), c);
            w.write_record(b"").unwrap();
            w.write_record(b"hello").unwrap();
            w.write_record(&vec![7u8; 100_000]).unwrap();
            let bytes = w.finish().unwrap();
            assert_eq!(Compression::sniff(&bytes), Some(c));
            let recs: Vec<_> = TfRecordReader::new(&bytes[..], c, "mem")
                .collect::<Result<_>>()
                .unwrap();
            assert_eq!(recs.len(), 3);
            assert_eq!(recs[1], b"hello");
            assert_eq!(recs[2].len(), 100_000);
        }
    }

    #[test]
    fn compression_levels_trade_size_and_read_back_the_same() {
        // Records like Examples: repetitive but not constant.
        let records: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| {
                format!(
                    "user {} item {} device mobile price {}.99",
                    i % 97,
                    i * 7 % 1013,
                    i % 50
                )
                .into_bytes()
            })
            .collect();
        let mut sizes = Vec::new();
        for level in [0, 1, 6, 9] {
            let mut w = TfRecordWriter::with_level(Vec::new(), Compression::Gzip, level);
            for r in &records {
                w.write_record(r).unwrap();
            }
            let bytes = w.finish().unwrap();
            let back: Vec<Vec<u8>> = TfRecordReader::new(&bytes[..], Compression::Gzip, "mem")
                .collect::<Result<_>>()
                .unwrap();
            assert_eq!(back, records, "level {level}");
            sizes.push(bytes.len());
        }
        assert!(
            sizes[0] > sizes[1] && sizes[1] > sizes[2] && sizes[2] >= sizes[3],
            "{sizes:?}"
        );
        let mut default = TfRecordWriter::new(Vec::new(), Compression::Gzip);
        for r in &records {
            default.write_record(r).unwrap();
        }
        assert_eq!(
            default.finish().unwrap().len(),
            sizes[2],
            "the default is level 6"
        );
    }

    #[test]
    fn truncated_header_is_error() {
        let mut v = Vec::new();
        frame_record(&mut v, b"abc");
        v.extend_from_slice(&[1, 2, 3]);
        let mut r = TfRecordReader::new(&v[..], Compression::None, "x");
        assert_eq!(r.next_record().unwrap().unwrap(), b"abc");
        let e = r.next_record().unwrap_err();
        assert!(
            matches!(
                e,
                Error::Truncated {
                    index: 1,
                    offset: 19,
                    record_start: 19,
                    ..
                }
            ),
            "{e}"
        );
        assert!(r.next_record().unwrap().is_none());
    }
}
