//! Hugging Face hub datasets as parquet files, found in (or downloaded into) the same cache
//! Python's `huggingface_hub` uses, so a cache filled by `datasets` users is shared.
//!
//! Dataset repositories live in `<cache>/datasets--{org}--{name}/`, with `refs/{revision}`
//! holding a commit hash and `snapshots/{hash}/{path}` the files (see [`crate::hub`]). A revision
//! may be a branch, a ref such as `refs/convert/parquet` (where the hub's automatic parquet export
//! lives), or a commit.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::hub::{Hub, RepoKind};

/// One file of a hub dataset repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// `org/name`, e.g. `nyu-mll/glue`.
    pub repo: String,
    /// Branch, ref or commit, e.g. `main` or `refs/convert/parquet`.
    pub revision: String,
    /// Path inside the repository, e.g. `mnli/train-00000-of-00001.parquet`.
    pub path: String,
}

impl HubFile {
    /// The file `path` of dataset `repo` at `revision`.
    pub fn new(repo: &str, revision: &str, path: &str) -> Self {
        Self { repo: repo.into(), revision: revision.into(), path: path.into() }
    }
}

impl HubFile {
    /// The local path of the file: from the cache, else downloaded into it unless offline.
    pub fn resolve(&self, hub: &Hub) -> Result<PathBuf> {
        let cached = hub.snapshot(RepoKind::Dataset, &self.repo, &self.revision).map(|s| s.join(&self.path));
        if let Some(path) = cached.filter(|p| p.is_file()) {
            return Ok(path);
        }
        hub.download(RepoKind::Dataset, &self.repo, &self.revision, &self.path).map_err(|why| Error::DatasetNotCached {
            repo: self.repo.clone(),
            revision: self.revision.clone(),
            cache: hub.cache.clone(),
            why,
            files: self.path.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_files_through_refs_and_reports_missing_ones() {
        let file = HubFile::new("nyu-mll/glue", "main", "rte/train-00000-of-00001.parquet");
        let cache = tempfile::tempdir().unwrap();
        let hub = Hub { cache: cache.path().into(), offline: true };
        let err = file.resolve(&hub).unwrap_err().to_string();
        assert!(err.contains("nyu-mll/glue") && err.contains("rte/train-00000-of-00001.parquet"), "{err}");
        assert!(err.contains(&cache.path().display().to_string()) && err.contains("--repo-type dataset"), "{err}");

        let repo = cache.path().join("datasets--nyu-mll--glue");
        let snapshot = repo.join("snapshots/0123456789abcdef0123456789abcdef01234567/rte");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("train-00000-of-00001.parquet"), b"x").unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123456789abcdef0123456789abcdef01234567\n").unwrap();
        assert_eq!(file.resolve(&hub).unwrap(), snapshot.join("train-00000-of-00001.parquet"));
    }
}
