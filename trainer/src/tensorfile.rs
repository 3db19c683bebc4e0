//! Named f32 / u32 tensors plus string metadata in the safetensors layout, through the
//! `safetensors` crate (files open with Python's `safetensors` as well).
//!
//! Reading is the crate's: [`SafeTensors::read_metadata`] and [`SafeTensors::deserialize`]
//! check the header length, its JSON, and that the tensors' byte ranges tile the data exactly
//! with the size their dtype and shape imply. Writing uses the crate's [`TensorInfo`] and its
//! layout (tensors ordered by descending dtype alignment, then name; the header padded with
//! spaces to a multiple of 8 bytes) — but not `safetensors::serialize` itself: it takes the
//! `__metadata__` entries as a std `HashMap`, whose iteration order changes from process to
//! process, so the same checkpoint or model would get different bytes (and a different
//! SHA-256) on every run. The header here writes them in sorted order instead; the unit tests
//! check the bytes against `safetensors::serialize`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{TensorInfo, View};
use safetensors::{Dtype, SafeTensors};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::{Error, Result};

/// One stored tensor: little-endian data of `shape` (row-major).
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Stored {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Named tensors plus string metadata.
#[derive(Debug, Default, Clone)]
pub struct TensorFile {
    /// `__metadata__` entries.
    pub meta: BTreeMap<String, String>,
    tensors: BTreeMap<String, Stored>,
    /// The file (or message) this was parsed from, for errors.
    origin: Option<PathBuf>,
}

impl TensorFile {
    /// Adds an f32 tensor.
    pub fn put_f32(&mut self, name: &str, shape: &[usize], data: &[f32]) {
        debug_assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor `{name}`"
        );
        self.put(
            name,
            Dtype::F32,
            shape,
            crate::comm::as_bytes(data).to_vec(),
        );
    }

    /// Adds a u32 tensor.
    pub fn put_u32(&mut self, name: &str, shape: &[usize], data: &[u32]) {
        debug_assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor `{name}`"
        );
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.put(name, Dtype::U32, shape, bytes);
    }

    fn put(&mut self, name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) {
        self.tensors.insert(
            name.into(),
            Stored {
                dtype,
                shape: shape.to_vec(),
                data,
            },
        );
    }

    /// An f32 tensor's data.
    pub fn f32s(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self
            .get(name, Dtype::F32)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect())
    }

    /// A u32 tensor's data.
    pub fn u32s(&self, name: &str) -> Result<Vec<u32>> {
        Ok(self
            .get(name, Dtype::U32)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect())
    }

    /// A tensor's shape.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    fn origin(&self) -> PathBuf {
        self.origin
            .clone()
            .unwrap_or_else(|| PathBuf::from("tensor file in memory"))
    }

    fn tensor_error(&self, tensor: &str, message: String) -> Error {
        Error::Tensor {
            path: self.origin(),
            tensor: tensor.into(),
            message,
        }
    }

    fn get(&self, name: &str, dtype: Dtype) -> Result<&[u8]> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| self.tensor_error(name, "missing from the file".into()))?;
        if t.dtype != dtype {
            return Err(self.tensor_error(name, format!("is {}, expected {dtype}", t.dtype)));
        }
        Ok(&t.data)
    }

    /// The tensors in the crate's data order: by descending dtype alignment, then name.
    fn data_order(&self) -> Vec<(&str, &Stored)> {
        let mut order: Vec<(&str, &Stored)> =
            self.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        order.sort_by(|(ln, l), (rn, r)| r.dtype.cmp(&l.dtype).then(ln.cmp(rn)));
        order
    }

    /// Serialises the file (the same bytes for the same tensors and metadata).
    pub fn to_bytes(&self) -> Vec<u8> {
        let order = self.data_order();
        let mut offset = 0;
        let infos: Vec<(&str, TensorInfo)> = order
            .iter()
            .map(|&(name, t)| {
                let info = TensorInfo {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    data_offsets: (offset, offset + t.data.len()),
                };
                offset += t.data.len();
                (name, info)
            })
            .collect();
        let mut header = serde_json::to_vec(&Header {
            meta: &self.meta,
            tensors: &infos,
        })
        .expect("a header of strings and integers serialises");
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut out = Vec::with_capacity(8 + header.len() + offset);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for (_, t) in order {
            out.extend_from_slice(&t.data);
        }
        out
    }

    /// Parses a safetensors file's bytes; `what` (a path, or e.g. "loader state message")
    /// names it in errors. Only F32 and U32 tensors are accepted.
    pub fn from_bytes(bytes: &[u8], what: impl AsRef<Path>) -> Result<Self> {
        let origin = what.as_ref().to_path_buf();
        let bad = |e| Error::Safetensors {
            path: origin.clone(),
            source: Box::new(e),
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(bad)?;
        let file = SafeTensors::deserialize(bytes).map_err(bad)?;
        let mut f = TensorFile {
            meta: header
                .metadata()
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tensors: BTreeMap::new(),
            origin: Some(origin.clone()),
        };
        for (name, view) in file.iter() {
            if !matches!(view.dtype(), Dtype::F32 | Dtype::U32) {
                return Err(f.tensor_error(
                    name,
                    format!(
                        "has dtype {}; only F32 and U32 tensors are read",
                        view.dtype()
                    ),
                ));
            }
            f.put(name, view.dtype(), view.shape(), view.data().to_vec());
        }
        Ok(f)
    }

    /// Writes to `path` atomically and durably (`kiln_connectors::store::write_atomic`:
    /// temporary file in the same directory, fsync, rename, directory fsync), creating the
    /// directory if needed.
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
        }
        kiln_connectors::store::write_atomic(path, self.to_bytes()).map_err(Error::write)
    }

    /// Reads a file written by [`write_atomic`](Self::write_atomic) (or any safetensors file
    /// of F32/U32 tensors).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
        Self::from_bytes(&bytes, path)
    }
}

/// The JSON header: `__metadata__` (sorted, omitted when empty), then each tensor's
/// [`TensorInfo`] in data order — what `safetensors::serialize` writes, in a fixed order.
struct Header<'a> {
    meta: &'a BTreeMap<String, String>,
    tensors: &'a [(&'a str, TensorInfo)],
}

impl Serialize for Header<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(
            self.tensors.len() + usize::from(!self.meta.is_empty()),
        ))?;
        if !self.meta.is_empty() {
            map.serialize_entry("__metadata__", self.meta)?;
        }
        for (name, info) in self.tensors {
            map.serialize_entry(name, info)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The error's message followed by those of its sources, `: `-separated.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(&format!(": {c}"));
            cur = c.source();
        }
        s
    }

    fn sample() -> TensorFile {
        let mut f = TensorFile::default();
        f.meta.insert("step".into(), "42".into());
        f.meta.insert("format".into(), "kiln-test".into());
        f.meta.insert("a.json".into(), r#"{"x": [1, 2]}"#.into());
        f.put_f32("weights", &[2, 3], &[1.0, -2.5, 3.25, 0.0, f32::MIN, 7.0]);
        f.put_u32("ids", &[3], &[7, 0, u32::MAX]);
        f.put_f32("empty", &[0, 4], &[]);
        f
    }

    #[test]
    fn round_trip_keeps_tensors_shapes_and_metadata() {
        let f = sample();
        let bytes = f.to_bytes();
        assert_eq!(bytes, f.to_bytes(), "the same file gives the same bytes");
        let g = TensorFile::from_bytes(&bytes, "sample").unwrap();
        assert_eq!(g.meta, f.meta);
        assert_eq!(
            g.f32s("weights").unwrap(),
            [1.0, -2.5, 3.25, 0.0, f32::MIN, 7.0]
        );
        assert_eq!(g.u32s("ids").unwrap(), [7, 0, u32::MAX]);
        assert_eq!(g.f32s("empty").unwrap(), Vec::<f32>::new());
        assert_eq!(g.shape("weights"), Some(&[2, 3][..]));
        assert_eq!(g.shape("empty"), Some(&[0, 4][..]));
        assert_eq!(g.shape("nope"), None);
        assert_eq!(g.to_bytes(), bytes);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/t.safetensors");
        f.write_atomic(&p).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
        assert_eq!(
            TensorFile::read(&p).unwrap().u32s("ids").unwrap(),
            [7, 0, u32::MAX]
        );
    }

    #[test]
    fn bytes_are_the_safetensors_crates() {
        // Without metadata (or with one entry, where a HashMap has one order) the bytes are
        // exactly what `safetensors::serialize` writes.
        let mut f = sample();
        f.meta.clear();
        assert_eq!(
            f.to_bytes(),
            safetensors::serialize(f.data_order(), None).unwrap()
        );
        f.meta.insert("format".into(), "x".into());
        let one = HashMap::from([("format".to_string(), "x".to_string())]);
        assert_eq!(
            f.to_bytes(),
            safetensors::serialize(f.data_order(), Some(one)).unwrap()
        );
        // With more, the crate reads back the same metadata and data.
        let f = sample();
        let bytes = f.to_bytes();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta: BTreeMap<String, String> =
            header.metadata().clone().unwrap().into_iter().collect();
        assert_eq!(meta, f.meta);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let w = st.tensor("weights").unwrap();
        assert_eq!(w.dtype(), Dtype::F32);
        assert_eq!(w.shape(), [2, 3]);
        assert_eq!(w.data(), crate::comm::as_bytes(&f.f32s("weights").unwrap()));
    }

    #[test]
    fn files_of_the_former_writer_still_load() {
        // The layout Kiln wrote before this module used the crate: header keys in sorted
        // order, `data_offsets` first, data in name order (`ids` before `weights`).
        let header = concat!(
            r#"{"__metadata__":{"step":"42"},"#,
            r#""ids":{"data_offsets":[0,8],"dtype":"U32","shape":[2]},"#,
            r#""weights":{"data_offsets":[8,16],"dtype":"F32","shape":[1,2]}}"#
        );
        let mut h = header.as_bytes().to_vec();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&h);
        bytes.extend(5u32.to_le_bytes().into_iter().chain(9u32.to_le_bytes()));
        bytes.extend(
            1.5f32
                .to_le_bytes()
                .into_iter()
                .chain((-2f32).to_le_bytes()),
        );
        let f = TensorFile::from_bytes(&bytes, "old.safetensors").unwrap();
        assert_eq!(f.meta["step"], "42");
        assert_eq!(f.u32s("ids").unwrap(), [5, 9]);
        assert_eq!(f.f32s("weights").unwrap(), [1.5, -2.0]);
        assert_eq!(f.shape("weights"), Some(&[1, 2][..]));
    }

    #[test]
    fn wrong_dtype_and_missing_tensor_name_the_file_and_tensor() {
        let f = TensorFile::from_bytes(&sample().to_bytes(), "ckpt-1.safetensors").unwrap();
        let e = f.f32s("ids").unwrap_err();
        assert!(
            matches!(&e, Error::Tensor { tensor, .. } if tensor == "ids"),
            "{e}"
        );
        assert_eq!(
            chain(&e),
            "ckpt-1.safetensors: tensor `ids`: is U32, expected F32"
        );
        let e = f.u32s("weights").unwrap_err();
        assert_eq!(
            chain(&e),
            "ckpt-1.safetensors: tensor `weights`: is F32, expected U32"
        );
        let e = f.f32s("adam.dense_m").unwrap_err();
        assert_eq!(
            chain(&e),
            "ckpt-1.safetensors: tensor `adam.dense_m`: missing from the file"
        );
        // A file built in memory says so.
        let e = sample().f32s("nope").unwrap_err();
        assert!(chain(&e).starts_with("tensor file in memory: tensor `nope`"));
    }

    #[test]
    fn other_dtypes_are_refused() {
        let data = [0u8; 16];
        let v = safetensors::tensor::TensorView::new(Dtype::F64, vec![2], &data).unwrap();
        let bytes = safetensors::serialize([("x", v)], None).unwrap();
        let e = TensorFile::from_bytes(&bytes, "f64.safetensors").unwrap_err();
        assert_eq!(
            chain(&e),
            "f64.safetensors: tensor `x`: has dtype F64; only F32 and U32 tensors are read"
        );
    }

    #[test]
    fn truncated_or_garbage_files_are_errors_naming_the_file() {
        let bytes = sample().to_bytes();
        for cut in [0, 5, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            let e = TensorFile::from_bytes(&bytes[..cut], "t.safetensors").unwrap_err();
            assert!(matches!(e, Error::Safetensors { .. }), "{cut}: {e}");
            let c = chain(&e);
            assert!(
                c.starts_with("t.safetensors: not a safetensors file: "),
                "{cut}: {c}"
            );
        }
        // Trailing bytes, or a header that is not JSON.
        let mut long = bytes.clone();
        long.push(0);
        assert!(TensorFile::from_bytes(&long, "t").is_err());
        let mut bad = bytes;
        bad[8] = b'[';
        let e = TensorFile::from_bytes(&bad, "t").unwrap_err();
        assert!(chain(&e).contains("JSON"), "{}", chain(&e));
        // A missing file names the path and keeps the OS error.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("absent.safetensors");
        let e = TensorFile::read(&p).unwrap_err();
        let src = std::error::Error::source(&e).unwrap();
        assert_eq!(
            src.downcast_ref::<std::io::Error>().unwrap().kind(),
            std::io::ErrorKind::NotFound
        );
        assert!(chain(&e).starts_with(&format!("{}: ", p.display())));
    }
}
