//! CSV and JSON-lines sources parsed line-aware, so bad rows are named or rejected, never lost.
//!
//! A file is parsed in chunks of lines with Arrow's CSV/JSON decoders; when a chunk fails,
//! its lines are parsed one by one to find the bad ones. Under the `fail` policy the first
//! bad line fails the query with `file:line: reason`; under `reject` bad lines are kept in
//! the [`BadRowLedger`] (written to the rejects location by the job) and counted, and the
//! job checks `rows_in = rows_out + rows_rejected` per source.
//!
//! Records must not span lines (no newlines inside quoted CSV fields).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;

use crate::spec::BadRowPolicy;

/// Lines per decoding chunk.
const CHUNK_LINES: usize = 32 * 1024;

/// Text formats Kiln parses itself.
#[derive(Debug, Clone, Copy)]
pub enum TextFormat {
    /// CSV with the given delimiter; the first line is skipped when `has_header`.
    Csv {
        /// Field delimiter.
        delimiter: u8,
        /// Whether line 1 is a header.
        has_header: bool,
    },
    /// One JSON object per line.
    Jsonl,
}

/// A malformed input row.
#[derive(Debug, Clone, Serialize)]
pub struct BadRow {
    /// Source name.
    pub source: String,
    /// File URL.
    pub file: String,
    /// 1-based line number in the file.
    pub line: u64,
    /// Why it was rejected.
    pub error: String,
    /// The raw line (lossy UTF-8).
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

/// Bad rows and row counts shared by every text partition of a run.
#[derive(Debug)]
pub struct BadRowLedger {
    policy: BadRowPolicy,
    inner: Mutex<LedgerInner>,
}

#[derive(Debug, Default)]
struct LedgerInner {
    rejected: Vec<BadRow>,
    counts: BTreeMap<String, RowCounts>,
}

impl BadRowLedger {
    /// An empty ledger applying `policy`.
    pub fn new(policy: BadRowPolicy) -> Self {
        Self {
            policy,
            inner: Mutex::new(LedgerInner::default()),
        }
    }

    /// Row counts per text source, by source name.
    pub fn counts(&self) -> BTreeMap<String, RowCounts> {
        self.inner.lock().expect("ledger lock").counts.clone()
    }

    /// Rejected rows, ordered by source, file and line.
    pub fn rejected(&self) -> Vec<BadRow> {
        let mut rows = self.inner.lock().expect("ledger lock").rejected.clone();
        rows.sort_by(|a, b| (&a.source, &a.file, a.line).cmp(&(&b.source, &b.file, b.line)));
        rows
    }

    fn record(&self, source: &str, rows_in: u64, rows_out: u64, bad: Vec<BadRow>) {
        let mut inner = self.inner.lock().expect("ledger lock");
        let c = inner.counts.entry(source.to_string()).or_default();
        c.rows_in += rows_in;
        c.rows_out += rows_out;
        c.rows_rejected += bad.len() as u64;
        inner.rejected.extend(bad);
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
        let this = TextFileParser {
            source: self.source.clone(),
            url: self.url.clone(),
            file_schema: Arc::clone(&self.file_schema),
            table_schema: Arc::clone(&self.table_schema),
            partition_value: self.partition_value.clone(),
            format: self.format,
            ledger: Arc::clone(&self.ledger),
        };
        let store = Arc::clone(&self.store);
        let stream = futures::stream::once(async move {
            let path = crate::stores::store_path(&this.url)?;
            let bytes = store
                .get(&path)
                .await
                .map_err(|e| {
                    DataFusionError::IoError(std::io::Error::other(format!("{}: {e}", this.url)))
                })?
                .bytes()
                .await
                .map_err(|e| {
                    DataFusionError::IoError(std::io::Error::other(format!("{}: {e}", this.url)))
                })?;
            let batches = this.parse(&bytes)?;
            Ok::<_, DataFusionError>(futures::stream::iter(batches.into_iter().map(Ok)))
        })
        .map(|r| match r {
            Ok(s) => s.boxed(),
            Err(e) => futures::stream::iter(vec![Err(e)]).boxed(),
        })
        .flatten();
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.table_schema),
            stream,
        ))
    }
}

struct TextFileParser {
    source: String,
    url: String,
    file_schema: SchemaRef,
    table_schema: SchemaRef,
    partition_value: Option<String>,
    format: TextFormat,
    ledger: Arc<BadRowLedger>,
}

impl TextFileParser {
    /// Parses a whole file; returns its batches or the first bad row's error (policy `fail`).
    fn parse(&self, bytes: &[u8]) -> Result<Vec<RecordBatch>, DataFusionError> {
        let mut lines: Vec<(u64, &[u8])> = Vec::new();
        let skip_header = matches!(
            self.format,
            TextFormat::Csv {
                has_header: true,
                ..
            }
        );
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if (i == 0 && skip_header) || line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            lines.push((i as u64 + 1, line));
        }
        let mut batches = Vec::new();
        let mut bad = Vec::new();
        let mut rows_out = 0u64;
        for chunk in lines.chunks(CHUNK_LINES) {
            let joined = join_lines(chunk.iter().map(|(_, l)| *l));
            let batch = match self.decode(&joined) {
                Ok(b) if b.num_rows() == chunk.len() => b,
                _ => self.decode_line_by_line(chunk, &mut bad)?,
            };
            rows_out += batch.num_rows() as u64;
            if batch.num_rows() > 0 {
                batches.push(self.with_partition_column(batch)?);
            }
        }
        self.ledger
            .record(&self.source, lines.len() as u64, rows_out, bad);
        Ok(batches)
    }

    fn decode_line_by_line(
        &self,
        chunk: &[(u64, &[u8])],
        bad: &mut Vec<BadRow>,
    ) -> Result<RecordBatch, DataFusionError> {
        let mut good = Vec::new();
        for (line_no, line) in chunk {
            let one = join_lines(std::iter::once(*line));
            let error = match self.decode(&one) {
                Ok(b) if b.num_rows() == 1 => {
                    good.push(b);
                    continue;
                }
                Ok(b) => format!("expected 1 row, decoded {}", b.num_rows()),
                Err(e) => clean_arrow_error(&e),
            };
            let row = BadRow {
                source: self.source.clone(),
                file: self.url.clone(),
                line: *line_no,
                error,
                raw: String::from_utf8_lossy(line).into_owned(),
            };
            if self.ledger.policy == BadRowPolicy::Fail {
                return Err(DataFusionError::External(Box::new(
                    crate::EngineError::BadRow {
                        file: row.file,
                        line: row.line,
                        message: format!(
                            "source `{}`: {} (set on_bad_rows = \"reject\" to divert bad rows)",
                            row.source, row.error
                        ),
                    },
                )));
            }
            bad.push(row);
        }
        concat_batches(&self.file_schema, &good).map_err(DataFusionError::from)
    }

    fn decode(&self, data: &[u8]) -> Result<RecordBatch, ArrowError> {
        let schema = Arc::clone(&self.file_schema);
        let batches: Vec<RecordBatch> = match self.format {
            TextFormat::Csv { delimiter, .. } => datafusion::arrow::csv::ReaderBuilder::new(schema)
                .with_header(false)
                .with_delimiter(delimiter)
                .with_batch_size(CHUNK_LINES)
                .build(Cursor::new(data))?
                .collect::<Result<_, _>>()?,
            TextFormat::Jsonl => datafusion::arrow::json::ReaderBuilder::new(schema)
                .with_batch_size(CHUNK_LINES)
                .build(Cursor::new(data))?
                .collect::<Result<_, _>>()?,
        };
        concat_batches(&self.file_schema, &batches)
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

fn join_lines<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
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
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn parser(format: TextFormat, policy: BadRowPolicy) -> TextFileParser {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        TextFileParser {
            source: "events".into(),
            url: "file:///d/x.csv".into(),
            file_schema: Arc::clone(&schema),
            table_schema: schema,
            partition_value: None,
            format,
            ledger: Arc::new(BadRowLedger::new(policy)),
        }
    }

    const CSV: &[u8] = b"a,b\n1,x\n2,y\nthree,z\n4,w\n\n";

    #[test]
    fn csv_bad_row_fails_with_file_and_line() {
        let p = parser(
            TextFormat::Csv {
                delimiter: b',',
                has_header: true,
            },
            BadRowPolicy::Fail,
        );
        let e = p.parse(CSV).unwrap_err().to_string();
        assert!(e.contains("file:///d/x.csv:4"), "{e}");
        assert!(e.contains("three"), "{e}");
    }

    #[test]
    fn csv_bad_row_rejected_and_counted() {
        let p = parser(
            TextFormat::Csv {
                delimiter: b',',
                has_header: true,
            },
            BadRowPolicy::Reject,
        );
        let batches = p.parse(CSV).unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 3);
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

    #[test]
    fn jsonl_bad_rows() {
        let p = parser(TextFormat::Jsonl, BadRowPolicy::Reject);
        let data = b"{\"a\":1,\"b\":\"x\"}\n{\"a\":\"nope\",\"b\":\"y\"}\nnot json\n{\"a\":3}\n";
        let batches = p.parse(data).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        let lines: Vec<u64> = p.ledger.rejected().iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![2, 3]);
        let c = p.ledger.counts()["events"];
        assert_eq!(c.rows_in, c.rows_out + c.rows_rejected);
    }
}
