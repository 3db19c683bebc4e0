//! TensorBoard event files: scalar summaries of a training run, readable by TensorBoard.
//!
//! A file `events.out.tfevents.<secs>.<host>.<pid>.kiln` in the model directory's `logs/` is
//! a TFRecord stream (the framing of [`kiln_connectors::tfrecord`], uncompressed) of `Event`
//! protos: first `file_version: "brain.Event:2"`, then one event per logged step holding a
//! `Summary` of `simple_value` scalars. The messages are the few fields Kiln writes of
//! TensorFlow's `tensorflow/core/util/event.proto` and `tensorflow/core/framework/summary.proto`,
//! with the same field numbers, encoded with prost (no TensorFlow, no protoc).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_connectors::tfrecord::{Compression, TfRecordWriter};
use prost::Message;

use crate::{Error, Result};

/// The model directory's subdirectory that holds event files.
pub const LOGS_DIR: &str = "logs";

/// The `file_version` of the first event of every file (what TensorBoard's writers write).
pub const FILE_VERSION: &str = "brain.Event:2";

/// Scalar tags Kiln's trainer writes.
pub mod tags {
    /// Mean training loss over the logging window ending at the event's step.
    pub const TRAIN_LOSS: &str = "train/loss";
    /// Learning rate of the event's step.
    pub const LEARNING_RATE: &str = "train/learning_rate";
    /// Training examples per second (all ranks) over the logging window.
    pub const EXAMPLES_PER_SEC: &str = "train/examples_per_sec";
    /// Held-out ROC AUC of the final model (absent when undefined: one class).
    pub const EVAL_AUC: &str = "eval/auc";
    /// Held-out log loss of the final model.
    pub const EVAL_LOG_LOSS: &str = "eval/log_loss";
    /// Held-out accuracy of the final model.
    pub const EVAL_ACCURACY: &str = "eval/accuracy";
}

/// `tensorflow.Event` (event.proto): the fields Kiln writes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// Global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// The `what` oneof.
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

/// `Event.what` (a oneof): the members Kiln writes.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// `string file_version = 3`: the first event of a file.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// `Summary summary = 5`.
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary` (summary.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// `repeated Value value = 1`.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: a tag and a scalar (`float simple_value = 2`, a member of the
/// `value` oneof; the only one Kiln writes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// `string tag = 1`.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// `float simple_value = 2`.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// Appends events to one event file; every event is flushed to the file as it is written,
/// so TensorBoard sees a running job's progress.
pub struct EventWriter {
    out: TfRecordWriter<BufWriter<File>>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<secs>.<host>.<pid>.kiln` (creating `dir`) and writes
    /// the `file_version` event. Where that name exists (a second run in the same process and
    /// second), `<secs>` counts up to the first free name: names still sort in creation
    /// order, which is the order TensorBoard reads files of one directory in.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        let (host, pid) = (hostname(), std::process::id());
        let mut secs = now().trunc() as u64;
        let (file, path) = loop {
            let path = dir.join(format!("events.out.tfevents.{secs}.{host}.{pid}.kiln"));
            match File::create_new(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => secs += 1,
                Err(e) => return Err(Error::file(&path, e)),
            }
        };
        let mut w = EventWriter {
            out: TfRecordWriter::new(BufWriter::new(file), Compression::None),
            path,
        };
        w.write(&Event {
            wall_time: now(),
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        })?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event of `step` holding the scalars `(tag, value)` (as 32-bit floats, which
    /// is what `simple_value` holds).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let summary = Summary {
            value: values
                .iter()
                .map(|(tag, v)| SummaryValue {
                    tag: (*tag).to_string(),
                    simple_value: Some(*v as f32),
                })
                .collect(),
        };
        self.write(&Event {
            wall_time: now(),
            step: i64::try_from(step).unwrap_or(i64::MAX),
            what: Some(What::Summary(summary)),
        })
    }

    /// Writes an event and flushes it to the file.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        let path = &self.path;
        self.out
            .write_record(&event.encode_to_vec())
            .and_then(|()| self.out.get_mut().flush())
            .map_err(|e| Error::file(path, e))
    }

    /// Flushes and fsyncs the file; returns its path.
    pub fn finish(self) -> Result<PathBuf> {
        let path = self.path;
        let file = self
            .out
            .finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(|e| Error::file(&path, e))?;
        file.sync_all().map_err(|e| Error::file(&path, e))?;
        Ok(path)
    }
}

/// Removes the event files (`events.out.tfevents.*`) in `dir`, if any: a fresh (not resumed)
/// run starts its curves from scratch. Other files in `dir` stay.
pub fn clear(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::file(dir, e)),
    };
    for e in entries {
        let e = e.map_err(|e| Error::file(dir, e))?;
        if e.file_name()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")
        {
            std::fs::remove_file(e.path()).map_err(|err| Error::file(e.path(), err))?;
        }
    }
    Ok(())
}

/// Reads every event of an event file (tests, tools).
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    for_each_event(path, false, |e| out.push(e))?;
    Ok(out)
}

/// Decodes the events of one event file in order, handing each to `f`. With `allow_cut_tail`
/// a last record cut short (a writer still writing it) ends the file (returns true) instead
/// of being an error.
fn for_each_event(path: &Path, allow_cut_tail: bool, mut f: impl FnMut(Event)) -> Result<bool> {
    let file = File::open(path).map_err(|e| Error::file(path, e))?;
    let mut r = kiln_connectors::tfrecord::TfRecordReader::new(
        std::io::BufReader::new(file),
        Compression::None,
        path.display().to_string(),
    );
    loop {
        match r.next_record() {
            Ok(Some(rec)) => f(Event::decode(rec).map_err(|e| Error::file(path, e))?),
            Ok(None) => return Ok(false),
            Err(kiln_connectors::Error::Truncated { .. }) if allow_cut_tail => return Ok(true),
            Err(e) => return Err(Error::file(path, e)),
        }
    }
}

/// One point of a scalar curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalarPoint {
    /// Global step.
    pub step: i64,
    /// Seconds since the Unix epoch when it was written.
    pub wall_time: f64,
    /// The value (a 32-bit `simple_value`).
    pub value: f32,
}

/// The scalar curves of a `logs/` directory, by tag, as [`read_scalars`] reads them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scalars {
    /// Event files read, in name (= creation) order.
    pub files: Vec<PathBuf>,
    /// Points of each tag in file order, then step order within a file (the order
    /// TensorBoard plots them in).
    pub curves: std::collections::BTreeMap<String, Vec<ScalarPoint>>,
    /// A file whose last record was cut short (a writer still writing it): its complete
    /// records are in `curves`.
    pub truncated: Option<PathBuf>,
}

/// Reads the scalar summaries of every event file (`events.out.tfevents.*`) in `dir`, in
/// name order (TensorBoard's order for the files of one directory), through the TFRecord
/// framing of [`kiln_connectors::tfrecord`]. A missing `dir` has no curves. A file whose last
/// record is cut short (a training job still writing it) keeps its complete records; any
/// other damage (a CRC mismatch, a record that is not an `Event`) is an error naming the file.
pub fn read_scalars(dir: &Path) -> Result<Scalars> {
    let mut out = Scalars::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::file(dir, e)),
    };
    let mut files = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::file(dir, e))?;
        if e.file_name()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")
        {
            files.push(e.path());
        }
    }
    files.sort();
    for path in files {
        let curves = &mut out.curves;
        let cut = for_each_event(&path, true, |event| {
            if let Some(What::Summary(s)) = event.what {
                for v in s.value {
                    if let Some(value) = v.simple_value {
                        curves.entry(v.tag).or_default().push(ScalarPoint {
                            step: event.step,
                            wall_time: event.wall_time,
                            value,
                        });
                    }
                }
            }
        })?;
        if cut {
            out.truncated = Some(path.clone());
        }
        out.files.push(path);
    }
    Ok(out)
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This host's name (`localhost` if it cannot be read), as it goes into a file name: only
/// ASCII letters, digits, `-` and `.`.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; gethostname NUL-terminates
    // within that length or truncates, and the last byte is kept as a terminator.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len() - 1);
    let name: String = if rc == 0 {
        String::from_utf8_lossy(&buf[..end])
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_file_version_first_then_scalars() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join(LOGS_DIR);
        let mut w = EventWriter::create(&logs).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        assert!(
            name.ends_with(&format!(".{}.kiln", std::process::id())),
            "{name}"
        );
        w.scalars(10, &[(tags::TRAIN_LOSS, 0.5), (tags::LEARNING_RATE, 1e-3)])
            .unwrap();
        w.scalars(20, &[(tags::TRAIN_LOSS, 0.25)]).unwrap();
        let path = w.finish().unwrap();
        let events = read_events(&path).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].what, Some(What::FileVersion(FILE_VERSION.into())));
        assert!(events[0].wall_time > 1.7e9);
        assert_eq!(events[1].step, 10);
        let Some(What::Summary(s)) = &events[1].what else {
            panic!("{:?}", events[1]);
        };
        assert_eq!(s.value.len(), 2);
        assert_eq!(s.value[0].tag, "train/loss");
        assert_eq!(s.value[0].simple_value, Some(0.5));
        assert_eq!(s.value[1].simple_value, Some(1e-3f32));
        assert_eq!(events[2].step, 20);
        // A second file of this process in the same second gets the next free name.
        let second = EventWriter::create(&logs).unwrap().finish().unwrap();
        assert_ne!(second, path);
        assert!(second > path, "{second:?} sorts before {path:?}");
        assert_eq!(read_events(&second).unwrap().len(), 1);
    }

    /// The bytes of the first event are what TensorFlow's `Event` encoding gives: field 1
    /// (double, wire type 1), field 3 (length-delimited) "brain.Event:2".
    #[test]
    fn encoding_matches_the_proto_field_numbers() {
        let e = Event {
            wall_time: 1.5,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        };
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x1a, 13]);
        want.extend_from_slice(b"brain.Event:2");
        assert_eq!(e.encode_to_vec(), want);
        let s = Event {
            wall_time: 0.0,
            step: 7,
            what: Some(What::Summary(Summary {
                value: vec![SummaryValue {
                    tag: "a".into(),
                    simple_value: Some(2.0),
                }],
            })),
        };
        // step: field 2 varint; summary: field 5 bytes { value: field 1 bytes { tag: field 1,
        // simple_value: field 2 fixed32 } }.
        let mut want = vec![0x10, 7, 0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15];
        want.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(s.encode_to_vec(), want);
    }

    #[test]
    fn read_scalars_collects_curves_across_files_and_tolerates_a_cut_tail() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join(LOGS_DIR);
        assert_eq!(read_scalars(&logs).unwrap(), Scalars::default());
        let mut w = EventWriter::create(&logs).unwrap();
        w.scalars(10, &[(tags::TRAIN_LOSS, 0.5), (tags::LEARNING_RATE, 1e-3)])
            .unwrap();
        w.scalars(20, &[(tags::TRAIN_LOSS, 0.25)]).unwrap();
        let first = w.finish().unwrap();
        let mut w = EventWriter::create(&logs).unwrap();
        w.scalars(30, &[(tags::EVAL_AUC, 0.75)]).unwrap();
        let second = w.finish().unwrap();
        std::fs::write(logs.join("notes.txt"), "not an event file").unwrap();
        let s = read_scalars(&logs).unwrap();
        assert_eq!(s.files, [first.clone(), second.clone()]);
        assert_eq!(s.truncated, None);
        let loss: Vec<(i64, f32)> = s.curves[tags::TRAIN_LOSS]
            .iter()
            .map(|p| (p.step, p.value))
            .collect();
        assert_eq!(loss, [(10, 0.5), (20, 0.25)]);
        assert_eq!(s.curves[tags::LEARNING_RATE].len(), 1);
        assert_eq!(s.curves[tags::EVAL_AUC][0].step, 30);
        assert!(s.curves[tags::EVAL_AUC][0].wall_time > 1.7e9);
        // A writer cut off mid-record: the complete records stay readable.
        let mut bytes = std::fs::read(&second).unwrap();
        bytes.extend_from_slice(&[40, 0, 0, 0, 0]);
        std::fs::write(&second, &bytes).unwrap();
        let s = read_scalars(&logs).unwrap();
        assert_eq!(s.truncated.as_deref(), Some(second.as_path()));
        assert_eq!(s.curves[tags::EVAL_AUC].len(), 1);
        // A corrupted record is an error naming the file.
        let mut bytes = std::fs::read(&first).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 0xff;
        std::fs::write(&first, &bytes).unwrap();
        let e = read_scalars(&logs).unwrap_err().to_string();
        assert!(e.contains(&first.display().to_string()), "{e}");
    }

    #[test]
    fn clear_removes_only_event_files() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join(LOGS_DIR);
        clear(&logs).unwrap();
        let w = EventWriter::create(&logs).unwrap();
        let path = w.finish().unwrap();
        std::fs::write(logs.join("notes.txt"), "keep").unwrap();
        clear(&logs).unwrap();
        assert!(!path.exists());
        assert!(logs.join("notes.txt").exists());
    }

    #[test]
    fn hostname_is_safe_in_a_file_name() {
        let h = hostname();
        assert!(!h.is_empty());
        assert!(
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'),
            "{h}"
        );
    }
}
