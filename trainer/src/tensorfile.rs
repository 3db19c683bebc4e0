//! A minimal writer/reader of the safetensors layout (8-byte little-endian header length, a
//! JSON header naming each tensor's dtype, shape and byte range, then the raw little-endian
//! data). Files open with Python's `safetensors` as well. Written atomically (temp + rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use crate::{Error, Result};

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 32-bit unsigned integer.
    U32,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::U32 => "U32",
        }
    }
}

/// Named tensors plus string metadata.
#[derive(Debug, Default, Clone)]
pub struct TensorFile {
    /// `__metadata__` entries.
    pub meta: BTreeMap<String, String>,
    tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

impl TensorFile {
    /// Adds an f32 tensor.
    pub fn put_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) {
        self.tensors.insert(
            name.into(),
            (
                Dtype::F32,
                shape.to_vec(),
                crate::comm::as_bytes(data).to_vec(),
            ),
        );
    }

    /// Adds a u32 tensor.
    pub fn put_u32(&mut self, name: &str, shape: &[usize], data: &[u32]) {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors
            .insert(name.into(), (Dtype::U32, shape.to_vec(), bytes));
    }

    /// An f32 tensor's data.
    pub fn f32s(&self, name: &str) -> Result<Vec<f32>> {
        let (_, bytes) = self.get(name, Dtype::F32)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect())
    }

    /// A u32 tensor's data.
    pub fn u32s(&self, name: &str) -> Result<Vec<u32>> {
        let (_, bytes) = self.get(name, Dtype::U32)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect())
    }

    /// A tensor's shape.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.1.as_slice())
    }

    fn get(&self, name: &str, dtype: Dtype) -> Result<(&[usize], &[u8])> {
        let (d, s, b) = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::Data(format!("tensor `{name}` missing from the file")))?;
        if *d != dtype {
            return Err(Error::Data(format!(
                "tensor `{name}` is {}, expected {}",
                d.name(),
                dtype.name()
            )));
        }
        Ok((s, b))
    }

    /// Serialises the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        if !self.meta.is_empty() {
            header.insert("__metadata__".into(), json!(self.meta));
        }
        let mut off = 0usize;
        for (name, (d, s, b)) in &self.tensors {
            header.insert(
                name.clone(),
                json!({"dtype": d.name(), "shape": s, "data_offsets": [off, off + b.len()]}),
            );
            off += b.len();
        }
        let mut h = serde_json::to_vec(&Value::Object(header)).expect("json");
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + h.len() + off);
        out.extend_from_slice(&(h.len() as u64).to_le_bytes());
        out.extend_from_slice(&h);
        for (_, _, b) in self.tensors.values() {
            out.extend_from_slice(b);
        }
        out
    }

    /// Parses a file's bytes; `what` names it in errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self> {
        let bad = |m: &str| Error::file(what, format!("not a tensor file: {m}"));
        let n = u64::from_le_bytes(
            bytes
                .get(..8)
                .ok_or_else(|| bad("shorter than 8 bytes"))?
                .try_into()
                .expect("8"),
        ) as usize;
        let header = bytes
            .get(8..8 + n)
            .ok_or_else(|| bad("header runs past the end"))?;
        let header: serde_json::Map<String, Value> =
            serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
        let data = &bytes[8 + n..];
        let mut f = TensorFile::default();
        for (name, v) in header {
            if name == "__metadata__" {
                f.meta = serde_json::from_value(v).map_err(|e| bad(&e.to_string()))?;
                continue;
            }
            let dtype = match v["dtype"].as_str() {
                Some("F32") => Dtype::F32,
                Some("U32") => Dtype::U32,
                other => {
                    return Err(bad(&format!(
                        "tensor `{name}` has unsupported dtype {other:?}"
                    )));
                }
            };
            let shape: Vec<usize> =
                serde_json::from_value(v["shape"].clone()).map_err(|e| bad(&e.to_string()))?;
            let offs: [usize; 2] = serde_json::from_value(v["data_offsets"].clone())
                .map_err(|e| bad(&e.to_string()))?;
            let b = data
                .get(offs[0]..offs[1])
                .ok_or_else(|| bad(&format!("tensor `{name}` runs past the end")))?;
            if b.len() != shape.iter().product::<usize>() * 4 {
                return Err(bad(&format!(
                    "tensor `{name}` has {} bytes for shape {shape:?}",
                    b.len()
                )));
            }
            f.tensors.insert(name, (dtype, shape, b.to_vec()));
        }
        Ok(f)
    }

    /// Writes to `path` atomically (temporary file in the same directory, fsync, rename).
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes())
    }

    /// Reads a file written by [`write_atomic`](Self::write_atomic) (or any safetensors file
    /// of F32/U32 tensors).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }
}

/// Writes `bytes` to `path` atomically: temporary name, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::file(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::file(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}
