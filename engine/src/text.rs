//! CSV and JSON-lines sources parsed line-aware and strictly, so bad rows are named or
//! rejected, never lost and never coerced.
//!
//! A file is streamed from its object store (never loaded whole) and cut into chunks of
//! lines. CSV chunks are decoded with Arrow's CSV decoder; when a chunk fails, its lines are
//! decoded one by one to find the bad ones. JSON lines are decoded by Kiln against the
//! declared schema: a fractional number for an integer, a string for a number, a key the
//! schema does not declare, or a missing / null value in a `not null` column make the line
//! bad (`FILE:LINE: column user_id: expected int64, got 11.9`). A CSV header is checked
//! against the schema by name.
//!
//! Under the `fail` policy the first bad line fails the query with `file:line: reason`; under
//! `reject` bad lines are kept in the [`BadRowLedger`] (written to the rejects location by the
//! job before anything is committed) and counted. Lines read, rows emitted and rows rejected
//! are three independent counters; the job checks `rows_in = rows_out + rows_rejected` per
//! source. Each file is accounted once however many statements scan it: a later complete
//! scan of the same file replaces the earlier record instead of adding to it.
//!
//! Records must not span lines (no newlines inside quoted CSV fields).

use std::collections::BTreeMap;
use std::io::{Cursor, Seek, Write};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::BadRowPolicy;

/// Lines per decoding chunk.
const CHUNK_LINES: usize = 32 * 1024;
/// At most this many bytes of a bad line are kept in the rejects file's `raw` field.
const MAX_RAW_BYTES: usize = 64 * 1024;

/// Text formats Kiln parses itself.
#[derive(Debug, Clone, Copy)]
pub enum TextFormat {
    /// CSV with the given delimiter; line 1 is a header checked against the schema when
    /// `has_header`.
    Csv {
        /// Field delimiter (ASCII, checked when the spec is loaded).
        delimiter: u8,
        /// Whether line 1 is a header.
        has_header: bool,
    },
    /// One JSON object per line.
    Jsonl,
}

/// A malformed input row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BadRow {
    /// Source name.
    pub source: String,
    /// File URL.
    pub file: String,
    /// 1-based line number in the file.
    pub line: u64,
    /// Why it was rejected.
    pub error: String,
    /// The raw line (lossy UTF-8, at most 64 KiB).
    pub raw: String,
}

/// Row accounting of one source.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RowCounts {
    /// Data lines read (headers and blank lines excluded).
    pub rows_in: u64,
    /// Rows passed on to the query.
    pub rows_out: u64,
    /// Rows rejected.
    pub rows_rejected: u64,
}

impl RowCounts {
    fn add(&mut self, other: RowCounts) {
        self.rows_in += other.rows_in;
        self.rows_out += other.rows_out;
        self.rows_rejected += other.rows_rejected;
    }
}

/// Rejected rows kept in memory before they are spilled to a temporary file.
const REJECTS_IN_MEMORY_BYTES: usize = 1 << 20;

/// The rejected rows of one file scan, in line order: up to [`REJECTS_IN_MEMORY_BYTES`] in
/// memory, then appended as JSON lines to an anonymous temporary file (deleted when dropped),
/// so a file full of bad rows does not grow memory.
#[derive(Debug, Default)]
struct Rejected {
    /// JSON lines of the rows not yet spilled (after those in `spill`).
    buffer: Vec<u8>,
    spill: Option<std::fs::File>,
}

impl Rejected {
    fn push(&mut self, row: &BadRow) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.buffer, row).map_err(std::io::Error::other)?;
        self.buffer.push(b'\n');
        if self.buffer.len() >= REJECTS_IN_MEMORY_BYTES {
            let file = match &mut self.spill {
                Some(f) => f,
                None => self.spill.insert(tempfile::tempfile()?),
            };
            file.write_all(&self.buffer)?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Copies every row, as JSON lines in line order, to `out`.
    fn copy_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        if let Some(f) = &self.spill {
            let mut f = f.try_clone()?;
            f.seek(std::io::SeekFrom::Start(0))?;
            std::io::copy(&mut f, out)?;
        }
        out.write_all(&self.buffer)
    }
}

/// What one scan of one file (or one Kafka offset range) saw.
#[derive(Debug, Default)]
pub(crate) struct FileTally {
    pub(crate) counts: RowCounts,
    rejected: Rejected,
    /// Whether the scan reached the end of the file.
    pub(crate) complete: bool,
}

impl FileTally {
    /// Keeps a rejected row (spilling to a temporary file past 1 MiB) and counts it.
    pub(crate) fn reject(&mut self, row: &BadRow) -> std::io::Result<()> {
        self.rejected.push(row)?;
        self.counts.rows_rejected += 1;
        Ok(())
    }
}

/// Bad rows and row counts shared by every text partition of a run.
#[derive(Debug)]
pub struct BadRowLedger {
    policy: BadRowPolicy,
    /// By (source, file URL).
    files: Mutex<BTreeMap<(String, String), FileTally>>,
}

impl BadRowLedger {
    /// An empty ledger applying `policy`.
    pub fn new(policy: BadRowPolicy) -> Self {
        Self {
            policy,
            files: Mutex::new(BTreeMap::new()),
        }
    }

    /// The policy for bad rows.
    pub(crate) fn policy(&self) -> BadRowPolicy {
        self.policy
    }

    /// Row counts per text source, by source name.
    pub fn counts(&self) -> BTreeMap<String, RowCounts> {
        let files = self.files.lock().expect("ledger lock");
        let mut out: BTreeMap<String, RowCounts> = BTreeMap::new();
        for ((source, _), tally) in files.iter() {
            out.entry(source.clone()).or_default().add(tally.counts);
        }
        out
    }

    /// Writes the rejected rows as JSON lines (one [`BadRow`] each), ordered by source, file
    /// and line, to `out`; returns how many were written. Streams from the scans' spill files.
    pub fn write_rejected(&self, out: &mut dyn Write) -> std::io::Result<u64> {
        let files = self.files.lock().expect("ledger lock");
        let mut rows = 0;
        for tally in files.values() {
            tally.rejected.copy_to(out)?;
            rows += tally.counts.rows_rejected;
        }
        Ok(rows)
    }

    /// Rejected rows, ordered by source, file and line (reads every spill back into memory).
    #[cfg(test)]
    fn rejected(&self) -> Vec<BadRow> {
        let mut out = Vec::new();
        self.write_rejected(&mut out).expect("in-memory write");
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("a BadRow line"))
            .collect()
    }

    /// Records one scan of a file. A complete scan replaces any earlier record of the file
    /// (a source read by several statements is counted once); a partial scan (the query
    /// stopped early) is kept only when nothing better is known.
    pub(crate) fn record(&self, source: &str, file: &str, tally: FileTally) {
        let mut files = self.files.lock().expect("ledger lock");
        let key = (source.to_string(), file.to_string());
        match files.get(&key) {
            Some(old) if old.complete && !tally.complete => {}
            _ => {
                files.insert(key, tally);
            }
        }
    }
}

/// One text file as a DataFusion partition stream.
#[derive(Debug)]
pub struct TextFileStream {
    /// Source name (for errors and counts).
    pub source: String,
    /// File URL.
    pub url: String,
    /// Store holding the file.
    pub store: Arc<dyn ObjectStore>,
    /// Columns in the file.
    pub file_schema: SchemaRef,
    /// File columns plus the partition column, if any.
    pub table_schema: SchemaRef,
    /// Value of the partition column for this file.
    pub partition_value: Option<String>,
    /// CSV or JSON lines.
    pub format: TextFormat,
    /// Where bad rows and counts go.
    pub ledger: Arc<BadRowLedger>,
}

impl PartitionStream for TextFileStream {
    fn schema(&self) -> &SchemaRef {
        &self.table_schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let parser = Arc::new(TextFileParser {
            source: self.source.clone(),
            url: self.url.clone(),
            file_schema: Arc::clone(&self.file_schema),
            table_schema: Arc::clone(&self.table_schema),
            partition_value: self.partition_value.clone(),
            format: self.format,
            ledger: Arc::clone(&self.ledger),
        });
        let store = Arc::clone(&self.store);
        let p = Arc::clone(&parser);
        let opened = futures::stream::once(async move {
            let io = |e: &dyn std::fmt::Display| {
                DataFusionError::IoError(std::io::Error::other(format!("{}: {e}", p.url)))
            };
            let path = crate::stores::store_path(&p.url)?;
            let result = store.get(&path).await.map_err(|e| io(&e))?;
            Ok::<_, DataFusionError>(result.into_stream().boxed())
        });
        let stream = opened
            .map(move |r| match r {
                Ok(bytes) => Scan::new(Arc::clone(&parser), bytes).into_stream(),
                Err(e) => futures::stream::iter(vec![Err(e)]).boxed(),
            })
            .flatten();
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.table_schema),
            stream,
        ))
    }
}

/// What decodes one file: schema, format, policy.
struct TextFileParser {
    source: String,
    url: String,
    file_schema: SchemaRef,
    table_schema: SchemaRef,
    partition_value: Option<String>,
    format: TextFormat,
    ledger: Arc<BadRowLedger>,
}

/// Complete lines waiting to be decoded: one buffer, lines joined by `\n`.
#[derive(Default)]
struct Chunk {
    buf: Vec<u8>,
    lines: Vec<(u64, Range<usize>)>,
}

impl Chunk {
    fn push(&mut self, line_no: u64, line: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(line);
        self.lines.push((line_no, start..self.buf.len()));
        self.buf.push(b'\n');
    }

    fn line(&self, i: usize) -> &[u8] {
        &self.buf[self.lines[i].1.clone()]
    }
}

/// One scan of one file: reads the byte stream, cuts lines, decodes chunks.
struct Scan {
    parser: Arc<TextFileParser>,
    bytes: BoxStream<'static, object_store::Result<Bytes>>,
    /// The unfinished last line of what was read so far.
    carry: Vec<u8>,
    /// Number of lines seen (the last complete line's number).
    line_no: u64,
    chunk: Chunk,
    tally: FileTally,
    eof: bool,
    finished: bool,
}

impl Scan {
    fn new(
        parser: Arc<TextFileParser>,
        bytes: BoxStream<'static, object_store::Result<Bytes>>,
    ) -> Self {
        Scan {
            parser,
            bytes,
            carry: Vec::new(),
            line_no: 0,
            chunk: Chunk::default(),
            tally: FileTally::default(),
            eof: false,
            finished: false,
        }
    }

    fn into_stream(self) -> BoxStream<'static, Result<RecordBatch, DataFusionError>> {
        futures::stream::try_unfold(self, |mut scan| async move {
            match scan.next_batch().await? {
                Some(batch) => Ok(Some((batch, scan))),
                None => Ok(None),
            }
        })
        .boxed()
    }

    /// The next non-empty batch, or `None` at the end of the file.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>, DataFusionError> {
        loop {
            if self.chunk.lines.len() >= CHUNK_LINES || (self.eof && !self.chunk.lines.is_empty()) {
                let chunk = std::mem::take(&mut self.chunk);
                let batch = self.parser.decode_chunk(&chunk, &mut self.tally)?;
                if batch.num_rows() > 0 {
                    return Ok(Some(self.parser.with_partition_column(batch)?));
                }
                continue;
            }
            if self.eof {
                self.finish();
                return Ok(None);
            }
            match self.bytes.next().await {
                Some(Ok(bytes)) => self.cut_lines(&bytes)?,
                Some(Err(e)) => {
                    return Err(DataFusionError::IoError(std::io::Error::other(format!(
                        "{}: {e}",
                        self.parser.url
                    ))));
                }
                None => {
                    self.eof = true;
                    if !self.carry.is_empty() {
                        let last = std::mem::take(&mut self.carry);
                        self.accept_line(&last)?;
                    }
                }
            }
        }
    }

    /// Appends complete lines of `bytes` (after the carried partial line) to the chunk.
    fn cut_lines(&mut self, bytes: &[u8]) -> Result<(), DataFusionError> {
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.carry.is_empty() {
                self.accept_line(&rest[..i])?;
            } else {
                self.carry.extend_from_slice(&rest[..i]);
                let line = std::mem::take(&mut self.carry);
                self.accept_line(&line)?;
            }
            rest = &rest[i + 1..];
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }

    /// One complete line: the header is checked, blank lines skipped, data lines counted.
    fn accept_line(&mut self, line: &[u8]) -> Result<(), DataFusionError> {
        self.line_no += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.line_no == 1
            && let TextFormat::Csv {
                delimiter,
                has_header: true,
            } = self.parser.format
        {
            return self.parser.check_header(line, delimiter);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        self.tally.counts.rows_in += 1;
        self.chunk.push(self.line_no, line);
        Ok(())
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.tally.complete = true;
            let tally = std::mem::take(&mut self.tally);
            self.parser
                .ledger
                .record(&self.parser.source, &self.parser.url, tally);
        }
    }
}

impl Drop for Scan {
    /// A scan stopped early (a `LIMIT`, a failed query) still records what it read.
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            let tally = std::mem::take(&mut self.tally);
            self.parser
                .ledger
                .record(&self.parser.source, &self.parser.url, tally);
        }
    }
}

/// A value of a JSON line, converted for one column.
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// Arrow builders for the file schema's columns.
enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    Date32(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
}

impl ColumnBuilder {
    fn new(t: &DataType) -> Option<Self> {
        Some(match t {
            DataType::Boolean => ColumnBuilder::Bool(BooleanBuilder::new()),
            DataType::Int32 => ColumnBuilder::Int32(Int32Builder::new()),
            DataType::Int64 => ColumnBuilder::Int64(Int64Builder::new()),
            DataType::Float32 => ColumnBuilder::Float32(Float32Builder::new()),
            DataType::Float64 => ColumnBuilder::Float64(Float64Builder::new()),
            DataType::Utf8 => ColumnBuilder::Utf8(StringBuilder::new()),
            DataType::Date32 => ColumnBuilder::Date32(Date32Builder::new()),
            DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new(), tz.clone())
            }
            _ => return None,
        })
    }

    /// Appends a value already checked by [`convert`].
    fn append(&mut self, cell: Cell) {
        match (self, cell) {
            (ColumnBuilder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (ColumnBuilder::Int32(b), Cell::Int(v)) => b.append_value(v as i32),
            (ColumnBuilder::Int64(b), Cell::Int(v)) => b.append_value(v),
            (ColumnBuilder::Float32(b), Cell::Float(v)) => b.append_value(v as f32),
            (ColumnBuilder::Float64(b), Cell::Float(v)) => b.append_value(v),
            (ColumnBuilder::Utf8(b), Cell::Str(v)) => b.append_value(v),
            (ColumnBuilder::Date32(b), Cell::Int(v)) => b.append_value(v as i32),
            (ColumnBuilder::Timestamp(b, _), Cell::Int(v)) => b.append_value(v),
            (ColumnBuilder::Bool(b), _) => b.append_null(),
            (ColumnBuilder::Int32(b), _) => b.append_null(),
            (ColumnBuilder::Int64(b), _) => b.append_null(),
            (ColumnBuilder::Float32(b), _) => b.append_null(),
            (ColumnBuilder::Float64(b), _) => b.append_null(),
            (ColumnBuilder::Utf8(b), _) => b.append_null(),
            (ColumnBuilder::Date32(b), _) => b.append_null(),
            (ColumnBuilder::Timestamp(b, _), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Date32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(mut b, tz) => Arc::new(b.finish().with_timezone_opt(tz)),
        }
    }
}

/// The declared type's name, as written in specs.
fn type_name(t: &DataType) -> &'static str {
    match t {
        DataType::Boolean => "bool",
        DataType::Int32 => "int32",
        DataType::Int64 => "int64",
        DataType::Float32 => "float32",
        DataType::Float64 => "float64",
        DataType::Utf8 => "string",
        DataType::Date32 => "date",
        DataType::Timestamp(..) => "timestamp",
        _ => "unsupported",
    }
}

/// A JSON value as it appeared, shortened for messages.
fn shown(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 60 {
        let mut cut = 57;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Converts one JSON value for a column of type `t`, strictly: no rounding, no parsing of
/// numbers from strings, no numbers as strings, no overflow.
fn convert(v: &Value, t: &DataType) -> Result<Cell, String> {
    let bad = || format!("expected {}, got {}", type_name(t), shown(v));
    Ok(match t {
        DataType::Boolean => Cell::Bool(v.as_bool().ok_or_else(bad)?),
        DataType::Int32 => {
            let n = v.as_i64().ok_or_else(bad)?;
            i32::try_from(n).map_err(|_| format!("{} (out of int32 range)", bad()))?;
            Cell::Int(n)
        }
        DataType::Int64 => Cell::Int(v.as_i64().ok_or_else(bad)?),
        DataType::Float32 => {
            let x = v.as_f64().filter(|_| v.is_number()).ok_or_else(bad)?;
            if x.is_finite() && !(x as f32).is_finite() {
                return Err(format!("{} (out of float32 range)", bad()));
            }
            Cell::Float(x)
        }
        DataType::Float64 => Cell::Float(v.as_f64().filter(|_| v.is_number()).ok_or_else(bad)?),
        DataType::Utf8 => Cell::Str(v.as_str().ok_or_else(bad)?.to_string()),
        DataType::Date32 => match v {
            Value::String(s) => {
                let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad())?;
                let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
                Cell::Int((d - epoch).num_days())
            }
            _ => Cell::Int(
                v.as_i64()
                    .filter(|n| i32::try_from(*n).is_ok())
                    .ok_or_else(bad)?,
            ),
        },
        DataType::Timestamp(TimeUnit::Microsecond, _) => match v {
            Value::String(s) => {
                let nanos = string_to_timestamp_nanos(s).map_err(|_| bad())?;
                if nanos % 1000 != 0 {
                    return Err(format!("{} (finer than the column's microseconds)", bad()));
                }
                Cell::Int(nanos / 1000)
            }
            _ => Cell::Int(v.as_i64().ok_or_else(bad)?),
        },
        _ => {
            return Err(format!(
                "columns of type {t} cannot be read from JSON lines"
            ));
        }
    })
}

impl TextFileParser {
    /// Decodes one chunk of lines into a batch of the file schema; bad lines are rejected
    /// (or, under `fail`, fail the scan). Counts rows out and rejected into `tally`.
    fn decode_chunk(
        &self,
        chunk: &Chunk,
        tally: &mut FileTally,
    ) -> Result<RecordBatch, DataFusionError> {
        let batch = match self.format {
            TextFormat::Csv { delimiter, .. } => match self.decode_csv(&chunk.buf, delimiter) {
                Ok(b) if b.num_rows() == chunk.lines.len() => b,
                _ => self.decode_csv_line_by_line(chunk, delimiter, tally)?,
            },
            TextFormat::Jsonl => self.decode_jsonl(chunk, tally)?,
        };
        tally.counts.rows_out += batch.num_rows() as u64;
        Ok(batch)
    }

    /// A bad line: an error under `fail`, a rejected row under `reject`.
    fn bad_line(
        &self,
        line_no: u64,
        line: &[u8],
        error: String,
        tally: &mut FileTally,
    ) -> Result<(), DataFusionError> {
        if self.ledger.policy == BadRowPolicy::Fail {
            return Err(DataFusionError::External(Box::new(
                crate::EngineError::BadRow {
                    file: self.url.clone(),
                    line: line_no,
                    message: format!(
                        "source `{}`: {error} (set on_bad_rows = \"reject\" to divert bad rows)",
                        self.source
                    ),
                },
            )));
        }
        let raw = &line[..line.len().min(MAX_RAW_BYTES)];
        let row = BadRow {
            source: self.source.clone(),
            file: self.url.clone(),
            line: line_no,
            error,
            raw: String::from_utf8_lossy(raw).into_owned(),
        };
        tally.reject(&row).map_err(|e| {
            DataFusionError::Execution(format!(
                "{}: spilling rejected rows to a temporary file: {e}",
                self.url
            ))
        })
    }

    fn decode_csv_line_by_line(
        &self,
        chunk: &Chunk,
        delimiter: u8,
        tally: &mut FileTally,
    ) -> Result<RecordBatch, DataFusionError> {
        let mut good = Vec::new();
        let mut one = Vec::new();
        for (i, (line_no, _)) in chunk.lines.iter().enumerate() {
            let line = chunk.line(i);
            one.clear();
            one.extend_from_slice(line);
            one.push(b'\n');
            let error = match self.decode_csv(&one, delimiter) {
                Ok(b) if b.num_rows() == 1 => {
                    good.push(b);
                    continue;
                }
                Ok(b) => format!("expected 1 row, decoded {}", b.num_rows()),
                Err(e) => clean_arrow_error(&e),
            };
            self.bad_line(*line_no, line, error, tally)?;
        }
        concat_batches(&self.file_schema, &good).map_err(DataFusionError::from)
    }

    fn decode_csv(&self, data: &[u8], delimiter: u8) -> Result<RecordBatch, ArrowError> {
        let batches: Vec<RecordBatch> =
            datafusion::arrow::csv::ReaderBuilder::new(Arc::clone(&self.file_schema))
                .with_header(false)
                .with_delimiter(delimiter)
                .with_batch_size(CHUNK_LINES)
                .build(Cursor::new(data))?
                .collect::<Result<_, _>>()?;
        concat_batches(&self.file_schema, &batches)
    }

    /// The CSV header must name the schema's columns, in order.
    fn check_header(&self, line: &[u8], delimiter: u8) -> Result<(), DataFusionError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .delimiter(delimiter)
            .from_reader(line);
        let found: Vec<String> = match reader.records().next() {
            Some(Ok(r)) => r.iter().map(|f| f.trim().to_string()).collect(),
            Some(Err(e)) => vec![format!("<unreadable header: {e}>")],
            None => Vec::new(),
        };
        let expected: Vec<String> = self
            .file_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        if found == expected {
            return Ok(());
        }
        Err(DataFusionError::External(Box::new(
            crate::EngineError::CsvHeader {
                file: self.url.clone(),
                found,
                expected,
            },
        )))
    }

    fn decode_jsonl(
        &self,
        chunk: &Chunk,
        tally: &mut FileTally,
    ) -> Result<RecordBatch, DataFusionError> {
        let rows = (0..chunk.lines.len()).map(|i| (chunk.lines[i].0, chunk.line(i)));
        let (batch, _) = decode_json_rows(&self.source, &self.file_schema, rows, |n, line, e| {
            self.bad_line(n, line, e, tally)
        })?;
        Ok(batch)
    }

    fn with_partition_column(&self, batch: RecordBatch) -> Result<RecordBatch, DataFusionError> {
        let Some(value) = &self.partition_value else {
            return Ok(batch);
        };
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(StringArray::from(vec![
            value.as_str();
            batch.num_rows()
        ])));
        Ok(RecordBatch::try_new(
            Arc::clone(&self.table_schema),
            columns,
        )?)
    }
}

/// Decodes JSON objects `(id, bytes)` against `schema` (strictly: see the module docs) into
/// one batch. A value that does not fit goes to `bad(id, bytes, reason)`, which fails the
/// decode by returning an error or lets it continue. Returns the batch and the positions (in
/// `rows`) of the decoded rows.
pub(crate) fn decode_json_rows<'a>(
    source: &str,
    schema: &SchemaRef,
    rows: impl Iterator<Item = (u64, &'a [u8])>,
    mut bad: impl FnMut(u64, &[u8], String) -> Result<(), DataFusionError>,
) -> Result<(RecordBatch, Vec<usize>), DataFusionError> {
    let fields = schema.fields();
    let mut builders = Vec::with_capacity(fields.len());
    for f in fields.iter() {
        builders.push(ColumnBuilder::new(f.data_type()).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "source `{source}`: column `{}` of type {} cannot be read from JSON",
                f.name(),
                f.data_type()
            ))
        })?);
    }
    let mut cells: Vec<Cell> = Vec::with_capacity(fields.len());
    let mut kept = Vec::new();
    for (pos, (id, line)) in rows.enumerate() {
        cells.clear();
        match json_row(schema, line, &mut cells) {
            Ok(()) => {
                for (b, c) in builders.iter_mut().zip(cells.drain(..)) {
                    b.append(c);
                }
                kept.push(pos);
            }
            Err(error) => bad(id, line, error)?,
        }
    }
    let columns: Vec<ArrayRef> = builders.into_iter().map(ColumnBuilder::finish).collect();
    Ok((RecordBatch::try_new(Arc::clone(schema), columns)?, kept))
}

/// Checks one JSON object against the schema; fills `cells` in column order.
fn json_row(schema: &SchemaRef, line: &[u8], cells: &mut Vec<Cell>) -> Result<(), String> {
    let object: serde_json::Map<String, Value> = match serde_json::from_slice(line) {
        Ok(Value::Object(o)) => o,
        Ok(other) => return Err(format!("expected a JSON object, got {}", shown(&other))),
        Err(e) => return Err(format!("not JSON: {e}")),
    };
    if let Some(k) = object.keys().find(|k| schema.index_of(k).is_err()) {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(format!(
            "unknown column `{k}` (declared: {})",
            names.join(", ")
        ));
    }
    for f in schema.fields().iter() {
        let cell = match object.get(f.name()) {
            None | Some(Value::Null) if f.is_nullable() => Cell::Null,
            None => return Err(format!("column {}: missing (declared not null)", f.name())),
            Some(Value::Null) => {
                return Err(format!("column {}: null (declared not null)", f.name()));
            }
            Some(v) => {
                convert(v, f.data_type()).map_err(|e| format!("column {}: {e}", f.name()))?
            }
        };
        cells.push(cell);
    }
    Ok(())
}

/// Arrow's messages count lines inside our chunk; drop that part, we name the real line.
fn clean_arrow_error(e: &ArrowError) -> String {
    let s = e.to_string();
    let s = s
        .strip_prefix("Parser error: ")
        .or_else(|| s.strip_prefix("Json error: "))
        .unwrap_or(&s);
    let s = match s.find(" at line ") {
        Some(i) => {
            let tail = &s[i + " at line ".len()..];
            let rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
            format!("{}{}", &s[..i], rest)
        }
        None => s.to_string(),
    };
    match s.find(" for line ") {
        Some(i) => {
            s[..i].to_string()
                + s[i..]
                    .trim_start_matches(|c: char| c != ',' && c != '.')
                    .trim_start_matches(['.', ','])
        }
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Field, Int64Type, Schema};

    /// Issue 12.12: rejected rows beyond a bound are spilled to a temporary file, not held in
    /// memory, and come back complete and in line order.
    #[test]
    fn rejected_rows_spill_to_disk_and_come_back_in_order() {
        let mut r = Rejected::default();
        let rows = 20_000u64;
        for line in 1..=rows {
            r.push(&BadRow {
                source: "clicks".into(),
                file: "file:///in/part-0.csv".into(),
                line,
                error: "column amount: expected float64".into(),
                raw: format!("{line},user-{line},oops"),
            })
            .unwrap();
        }
        assert!(r.spill.is_some(), "20k rows (~2 MiB) must spill");
        assert!(r.buffer.len() < REJECTS_IN_MEMORY_BYTES);
        let mut out = Vec::new();
        r.copy_to(&mut out).unwrap();
        let lines: Vec<u64> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<BadRow>(l).unwrap().line)
            .collect();
        assert_eq!(lines, (1..=rows).collect::<Vec<_>>());
        // A second copy reads the spill again from its start.
        let mut again = Vec::new();
        r.copy_to(&mut again).unwrap();
        assert_eq!(again, out);
    }

    fn parser_with(
        schema: Schema,
        format: TextFormat,
        policy: BadRowPolicy,
    ) -> Arc<TextFileParser> {
        let schema = Arc::new(schema);
        Arc::new(TextFileParser {
            source: "events".into(),
            url: "file:///d/x.csv".into(),
            file_schema: Arc::clone(&schema),
            table_schema: schema,
            partition_value: None,
            format,
            ledger: Arc::new(BadRowLedger::new(policy)),
        })
    }

    fn parser(format: TextFormat, policy: BadRowPolicy) -> Arc<TextFileParser> {
        parser_with(
            Schema::new(vec![
                Field::new("a", DataType::Int64, true),
                Field::new("b", DataType::Utf8, true),
            ]),
            format,
            policy,
        )
    }

    const CSV_FMT: TextFormat = TextFormat::Csv {
        delimiter: b',',
        has_header: true,
    };

    /// Scans `data`, delivered in pieces of `piece` bytes (lines cut anywhere).
    fn scan(
        p: &Arc<TextFileParser>,
        data: &[u8],
        piece: usize,
    ) -> Result<Vec<RecordBatch>, DataFusionError> {
        let pieces: Vec<object_store::Result<Bytes>> = data
            .chunks(piece.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stream = futures::stream::iter(pieces).boxed();
        futures::executor::block_on(
            Scan::new(Arc::clone(p), stream)
                .into_stream()
                .collect::<Vec<_>>(),
        )
        .into_iter()
        .collect()
    }

    fn rows(batches: &[RecordBatch]) -> usize {
        batches.iter().map(|b| b.num_rows()).sum()
    }

    const CSV: &[u8] = b"a,b\n1,x\n2,y\nthree,z\n4,w\n\n";

    #[test]
    fn csv_bad_row_fails_with_file_and_line() {
        let p = parser(CSV_FMT, BadRowPolicy::Fail);
        let e = scan(&p, CSV, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("file:///d/x.csv:4"), "{e}");
        assert!(e.contains("three"), "{e}");
    }

    #[test]
    fn csv_bad_row_rejected_and_counted() {
        for piece in [1, 3, 1 << 20] {
            let p = parser(CSV_FMT, BadRowPolicy::Reject);
            let batches = scan(&p, CSV, piece).unwrap();
            assert_eq!(rows(&batches), 3);
            let counts = p.ledger.counts()["events"];
            assert_eq!(
                counts,
                RowCounts {
                    rows_in: 4,
                    rows_out: 3,
                    rows_rejected: 1
                }
            );
            let bad = p.ledger.rejected();
            assert_eq!(bad.len(), 1);
            assert_eq!((bad[0].line, bad[0].raw.as_str()), (4, "three,z"));
        }
    }

    #[test]
    fn csv_header_is_checked_by_name() {
        let p = parser(CSV_FMT, BadRowPolicy::Reject);
        let e = scan(&p, b"b,a\nx,1\n", 1 << 20).unwrap_err().to_string();
        assert!(e.contains("file:///d/x.csv"), "{e}");
        assert!(
            e.contains("header [b, a]") && e.contains("schema [a, b]"),
            "{e}"
        );
        // No header line configured: line 1 is data.
        let p = parser(
            TextFormat::Csv {
                delimiter: b',',
                has_header: false,
            },
            BadRowPolicy::Fail,
        );
        assert_eq!(rows(&scan(&p, b"1,x\n2,y", 1 << 20).unwrap()), 2);
    }

    #[test]
    fn jsonl_bad_rows() {
        let p = parser(TextFormat::Jsonl, BadRowPolicy::Reject);
        let data = b"{\"a\":1,\"b\":\"x\"}\n{\"a\":\"nope\",\"b\":\"y\"}\nnot json\n{\"a\":3}\n";
        let batches = scan(&p, data, 5).unwrap();
        assert_eq!(rows(&batches), 2);
        let lines: Vec<u64> = p.ledger.rejected().iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![2, 3]);
        let c = p.ledger.counts()["events"];
        assert_eq!(c.rows_in, c.rows_out + c.rows_rejected);
    }

    #[test]
    fn jsonl_is_strict_against_the_schema() {
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("price", DataType::Float64, true),
            Field::new("city", DataType::Utf8, false),
        ]);
        let p = parser_with(schema, TextFormat::Jsonl, BadRowPolicy::Reject);
        let data = br#"{"user_id": 11, "price": 2, "city": "x"}
{"user_id": 11.9, "city": "x"}
{"user_id": "12", "city": "x"}
{"usr_id": 12, "city": "x"}
{"user_id": 12}
{"user_id": 12, "price": "3.5", "city": "x"}
{"user_id": 12, "city": 7}
{"user_id": 9223372036854775808, "city": "x"}
{"user_id": null, "price": 1.5, "city": "y"}
"#;
        let batches = scan(&p, data, 7).unwrap();
        assert_eq!(rows(&batches), 2);
        let ids = batches[0].column(0).as_primitive::<Int64Type>();
        assert_eq!((ids.value(0), ids.is_null(1)), (11, true));
        let errors: Vec<(u64, String)> = p
            .ledger
            .rejected()
            .into_iter()
            .map(|r| (r.line, r.error))
            .collect();
        assert_eq!(
            errors,
            vec![
                (2, "column user_id: expected int64, got 11.9".to_string()),
                (3, "column user_id: expected int64, got \"12\"".to_string()),
                (
                    4,
                    "unknown column `usr_id` (declared: user_id, price, city)".to_string()
                ),
                (5, "column city: missing (declared not null)".to_string()),
                (6, "column price: expected float64, got \"3.5\"".to_string()),
                (7, "column city: expected string, got 7".to_string()),
                (
                    8,
                    "column user_id: expected int64, got 9223372036854775808".to_string()
                ),
            ]
        );
        assert_eq!(
            p.ledger.counts()["events"],
            RowCounts {
                rows_in: 9,
                rows_out: 2,
                rows_rejected: 7
            }
        );
    }

    #[test]
    fn jsonl_fail_policy_names_file_line_and_column() {
        let p = parser(TextFormat::Jsonl, BadRowPolicy::Fail);
        let e = scan(&p, b"{\"a\":1}\n{\"a\":11.9}\n", 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("file:///d/x.csv:2: source `events`: column a: expected int64, got 11.9"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_timestamps_and_dates() {
        let schema = Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("d", DataType::Date32, true),
        ]);
        let p = parser_with(schema, TextFormat::Jsonl, BadRowPolicy::Reject);
        let data = br#"{"ts": "2026-11-20T00:00:01.5Z", "d": "2026-11-20"}
{"ts": "2026-11-20T00:00:01.0000005Z"}
{"ts": "yesterday"}
"#;
        let batches = scan(&p, data, 1 << 20).unwrap();
        assert_eq!(rows(&batches), 1);
        let ts = batches[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_795_132_801_500_000);
        assert_eq!(p.ledger.rejected().len(), 2);
    }

    #[test]
    fn a_file_scanned_twice_is_counted_once() {
        let p = parser(CSV_FMT, BadRowPolicy::Reject);
        scan(&p, CSV, 1 << 20).unwrap();
        scan(&p, CSV, 2).unwrap();
        assert_eq!(
            p.ledger.counts()["events"],
            RowCounts {
                rows_in: 4,
                rows_out: 3,
                rows_rejected: 1
            }
        );
        assert_eq!(p.ledger.rejected().len(), 1);
    }
}
