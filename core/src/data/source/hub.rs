//! Hugging Face hub datasets as parquet files, found in (or downloaded into) the same cache
//! Python's `huggingface_hub` uses, so a cache filled by `datasets` users is shared.
//!
//! Dataset repositories live in `<cache>/datasets--{org}--{name}/`, with `refs/{revision}`
//! holding a commit hash and `snapshots/{hash}/{path}` the files (see [`crate::hub`]). A revision
//! may be a branch, a ref such as `refs/convert/parquet` (where the hub's automatic parquet export
//! lives), or a commit.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// A hub file as a run read it: the commit its revision resolved to, so a record names the
/// exact data (as `datasets` users pin `revision=`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HubSnapshot {
    /// `org/name`.
    pub repo: String,
    /// The revision asked for (branch or ref).
    pub revision: String,
    /// The commit it resolved to in the cache (the snapshot folder's name).
    pub commit: String,
    /// Path inside the repository.
    pub path: String,
}

impl HubFile {
    /// What a run records of this file, read from `local` (a path inside the cache's
    /// `snapshots/{commit}/`).
    pub fn snapshot(&self, local: &Path) -> HubSnapshot {
        let commit = (local.ancestors())
            .find(|a| a.parent().and_then(Path::file_name).is_some_and(|n| n == "snapshots"))
            .and_then(Path::file_name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        HubSnapshot { repo: self.repo.clone(), revision: self.revision.clone(), commit, path: self.path.clone() }
    }

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
        let local = file.resolve(&hub).unwrap();
        assert_eq!(local, snapshot.join("train-00000-of-00001.parquet"));
        assert_eq!(file.snapshot(&local).commit, "0123456789abcdef0123456789abcdef01234567");
    }
}
