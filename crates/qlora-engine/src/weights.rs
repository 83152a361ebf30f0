//! Safetensors weights of a Hugging Face model folder, single file or sharded
//! (`model.safetensors.index.json`), memory-mapped so a 7B checkpoint is not read into RAM
//! before it is quantized.
//!
//! The header of every file is validated up front (dtype known, shape × dtype size equal to
//! the byte range, range inside the file) so a truncated download or a header that lies
//! about its sizes is a clear error naming the file and tensor, never a panic or garbage.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Where one tensor lives: which file, its dtype and shape, its byte range in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    file: usize,
    start: usize,
    end: usize,
}

struct MappedFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

/// The tensors of a checkpoint, possibly spread over several files.
pub struct Weights {
    dir: PathBuf,
    files: Vec<MappedFile>,
    tensors: HashMap<String, TensorInfo>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights").field("dir", &self.dir).field("tensors", &self.tensors.len()).finish()
    }
}

impl Weights {
    /// Opens the weights of a model folder: `model.safetensors.index.json` (sharded) if
    /// present, else `model.safetensors`, else the folder's only `*.safetensors` file.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files = if index.is_file() {
            shard_files(&index)?
        } else if dir.join("model.safetensors").is_file() {
            vec![dir.join("model.safetensors")]
        } else {
            let single = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect::<Vec<_>>();
            if single.len() != 1 {
                return Err(Error::NoWeights { dir: dir.to_path_buf() });
            }
            single
        };
        Self::from_files(dir, &files)
    }

    /// Opens the given safetensors files as one checkpoint; `dir` is named in errors.
    pub fn from_files(dir: &Path, paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the file is opened read-only; like every safetensors loader we assume
            // it is not modified while mapped.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            for (name, info) in parse_header(path, &mmap, i)? {
                tensors.insert(name, info);
            }
            files.push(MappedFile { path: path.clone(), mmap });
        }
        Ok(Self { dir: dir.to_path_buf(), files, tensors })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// The file a tensor is stored in (for error messages).
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.tensors.get(name).map(|i| self.files[i.file].path.as_path())
    }

    /// The raw bytes of a tensor, straight from the mapped file.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.require(name)?;
        Ok(&self.files[info.file].mmap[info.start..info.end])
    }

    fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor { dir: self.dir.clone(), tensor: name.to_string() })
    }

    /// Loads a tensor in its stored dtype.
    pub fn get(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self.require(name)?;
        let bytes = &self.files[info.file].mmap[info.start..info.end];
        Ok(Tensor::from_raw_buffer(bytes, info.dtype, &info.shape, device)?)
    }

    /// Loads a tensor, checks its shape, and converts it to `dtype`.
    pub fn get_as(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let info = self.require(name)?;
        if info.shape != shape {
            return Err(Error::ShapeMismatch {
                path: self.files[info.file].path.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                actual: info.shape.clone(),
            });
        }
        if !matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::BadTensor {
                path: self.files[info.file].path.clone(),
                tensor: name.to_string(),
                reason: format!("dtype {:?} where a float weight was expected", info.dtype),
            });
        }
        Ok(self.get(name, device)?.to_dtype(dtype)?)
    }
}

/// The shard file names listed in a `model.safetensors.index.json`.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let parsed: Index =
        serde_json::from_str(&text).map_err(|e| Error::BadIndex { path: index.to_path_buf(), reason: format!("not a valid index: {e}") })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut names: Vec<&String> = parsed.weight_map.values().collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(Error::BadIndex {
                path: index.to_path_buf(),
                reason: format!("shard '{name}' is listed but {} does not exist; download it again", path.display()),
            });
        }
        out.push(path);
    }
    Ok(out)
}

fn dtype_of(s: &str) -> Option<(DType, usize)> {
    Some(match s {
        "F32" => (DType::F32, 4),
        "F16" => (DType::F16, 2),
        "BF16" => (DType::BF16, 2),
        "U8" => (DType::U8, 1),
        "I64" => (DType::I64, 8),
        "U32" => (DType::U32, 4),
        "F64" => (DType::F64, 8),
        _ => return None,
    })
}

/// Parses and validates a safetensors header against the file it sits in.
fn parse_header(path: &Path, buf: &[u8], file: usize) -> Result<Vec<(String, TensorInfo)>> {
    let bad = |reason: String| Error::BadSafetensors { path: path.to_path_buf(), reason };
    if buf.len() < 8 {
        return Err(bad(format!("the file is {} bytes, too short for a header; download it again", buf.len())));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")) as usize;
    if n > buf.len() - 8 {
        return Err(bad(format!("the header claims {n} bytes but the file holds {}; the file is truncated or not safetensors", buf.len())));
    }
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&buf[8..8 + n]).map_err(|e| bad(format!("the header is not valid JSON: {e}")))?;
    let data_len = buf.len() - 8 - n;
    let mut out = Vec::with_capacity(header.len());
    let mut declared = 0usize;
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad_t = |reason: String| Error::BadTensor { path: path.to_path_buf(), tensor: name.clone(), reason };
        let entry: RawEntry = serde_json::from_value(value).map_err(|e| bad_t(format!("invalid header entry: {e}")))?;
        let (dtype, size) = dtype_of(&entry.dtype).ok_or_else(|| Error::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name.clone(),
            dtype: entry.dtype.clone(),
        })?;
        let [start, end] = entry.data_offsets;
        let numel = entry.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let want = numel.and_then(|n| n.checked_mul(size));
        if end < start || want != Some(end - start) {
            return Err(bad_t(format!(
                "the header says shape {:?} of {} ({} bytes) but gives the byte range {start}..{end}; the header lies about its sizes",
                entry.shape,
                entry.dtype,
                want.map_or("too many".to_string(), |w| w.to_string()),
            )));
        }
        declared = declared.max(end);
        out.push((name, TensorInfo { dtype, shape: entry.shape, file, start: 8 + n + start, end: 8 + n + end }));
    }
    if declared > data_len {
        return Err(Error::Truncated { path: path.to_path_buf(), declared, actual: data_len });
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}
