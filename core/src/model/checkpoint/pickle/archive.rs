//! The zip half of a `torch.save` file: its entries, and tensors built from raw storages.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};
use zip::result::ZipError;
use zip::ZipArchive;

use super::machine::{StorageRef, TensorSpec};
use super::{PickleError, Result};

pub(super) struct Archive<'p> {
    zip: ZipArchive<File>,
    path: &'p Path,
    /// `"<archive_name>/"`: the directory every entry lives in (its name varies by file).
    pub(super) prefix: String,
    file_len: u64,
}

impl<'p> Archive<'p> {
    pub(super) fn open(path: &'p Path) -> Result<Self> {
        let io = |source| PickleError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let zip = ZipArchive::new(file).map_err(|source| match source {
            ZipError::Io(source) => PickleError::Io { path: path.to_owned(), source },
            source => PickleError::NotZip { path: path.to_owned(), source },
        })?;
        let pickle = zip.file_names().filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl")).min();
        let Some(prefix) = pickle.map(|n| n.trim_end_matches("data.pkl").to_owned()) else {
            return Err(PickleError::MissingPickle { path: path.to_owned() });
        };
        let mut archive = Archive { zip, path, prefix, file_len };
        let byteorder = format!("{}byteorder", archive.prefix);
        if archive.zip.file_names().any(|n| n == byteorder) {
            let found = String::from_utf8_lossy(&archive.read(&byteorder)?).trim().to_owned();
            if found != "little" {
                return Err(PickleError::ByteOrder { path: path.to_owned(), found });
            }
        }
        Ok(archive)
    }

    pub(super) fn read(&mut self, entry: &str) -> Result<Vec<u8>> {
        let err = |source| PickleError::Zip { path: self.path.to_owned(), entry: entry.to_owned(), source };
        let mut file = self.zip.by_name(entry).map_err(err)?;
        // The declared size is untrusted: never reserve more than the file could hold.
        let mut bytes = Vec::with_capacity(file.size().min(self.file_len) as usize);
        file.read_to_end(&mut bytes).map_err(|e| err(ZipError::Io(e)))?;
        Ok(bytes)
    }

    /// The whole storage as a 1-D tensor, read once per (key, dtype) and then shared.
    pub(super) fn storage(&mut self, entry: &str, s: &StorageRef, cache: &mut StorageCache) -> Result<Tensor> {
        if let Some(t) = cache.get(&(s.key.clone(), s.kind)) {
            return Ok(t.shallow_clone());
        }
        let bytes = self.read(&format!("{}data/{}", self.prefix, s.key))?;
        let need = usize::try_from(s.numel).ok().and_then(|n| n.checked_mul(s.kind.elt_size_in_bytes()));
        let Some(need) = need.filter(|&need| need <= bytes.len()) else {
            let (have, numel, kind) = (bytes.len(), s.numel, s.kind);
            let detail = format!("storage {} holds {have} bytes, less than {numel} {kind:?} elements", s.key);
            return Err(PickleError::StorageTooSmall { path: self.path.to_owned(), key: entry.to_owned(), detail });
        };
        let tensor = Tensor::f_from_data_size(&bytes[..need], &[s.numel], s.kind)
            .map_err(|source| PickleError::Torch { path: self.path.to_owned(), key: entry.to_owned(), source })?;
        cache.insert((s.key.clone(), s.kind), tensor.shallow_clone());
        Ok(tensor)
    }
}

pub(super) type StorageCache = HashMap<(String, Kind), Tensor>;

/// Views `storage` with the tensor's size/stride/offset (checked first, so libtorch never
/// sees an out-of-bounds view) and copies it out contiguous.
pub(super) fn materialise(path: &Path, key: &str, storage: &Tensor, spec: &TensorSpec) -> Result<Tensor> {
    let numel = storage.numel();
    if required_elements(spec).is_none_or(|n| n > numel as u64) {
        let (size, stride, offset) = (&spec.size, &spec.stride, spec.offset);
        let detail = format!(
            "storage {} has {numel} elements, too few for size {size:?}, stride {stride:?}, offset {offset}",
            spec.storage.key
        );
        return Err(PickleError::StorageTooSmall { path: path.to_owned(), key: key.to_owned(), detail });
    }
    storage
        .f_as_strided(spec.size.as_slice(), spec.stride.as_slice(), spec.offset)
        .and_then(|view| view.f_contiguous())
        .map_err(|source| PickleError::Torch { path: path.to_owned(), key: key.to_owned(), source })
}

/// Storage elements a strided view needs (offset of its last element + 1), or `None` if the
/// layout is invalid (negative values, rank mismatch, overflow).
fn required_elements(spec: &TensorSpec) -> Option<u64> {
    let (size, stride) = (&spec.size, &spec.stride);
    if spec.offset < 0 || size.len() != stride.len() || size.iter().chain(stride).any(|&v| v < 0) {
        return None;
    }
    size.iter().try_fold(1i64, |n, &d| n.checked_mul(d))?; // the copy's element count must fit
    if size.contains(&0) {
        return Some(0);
    }
    let extent = size.iter().zip(stride).try_fold(0i64, |acc, (&n, &s)| acc.checked_add((n - 1).checked_mul(s)?));
    u64::try_from(extent?.checked_add(spec.offset)?).ok()?.checked_add(1)
}
