//! Hugging Face hub datasets as parquet files, found in (or downloaded into) the same cache
//! Python's `huggingface_hub` uses, so a cache filled by `datasets` users is shared.
//!
//! Dataset repositories live in `<cache>/datasets--{org}--{name}/`, with `refs/{revision}`
//! holding a commit hash and `snapshots/{hash}/{path}` the files (the cache folder is found as
//! for models, see [`crate::model::source::hub_cache_dir`]). A revision may be a branch, a ref
//! such as `refs/convert/parquet` (where the hub's automatic parquet export lives), or a commit.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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

/// Where hub files are looked for, and whether they may be downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubAccess {
    /// The hub cache folder.
    pub cache: PathBuf,
    /// Never download (`HF_HUB_OFFLINE=1`): a missing file is an error saying what to fetch.
    pub offline: bool,
}

impl HubAccess {
    /// The user's cache ([`crate::model::source::hub_cache_dir`]) and `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Self { cache: crate::model::source::hub_cache_dir(), offline }
    }

    /// The local path of `file`: from the cache, else downloaded into it unless offline.
    pub fn resolve(&self, file: &HubFile) -> Result<PathBuf> {
        if let Some(path) = cached_dataset_file(&self.cache, file) {
            return Ok(path);
        }
        let not_cached = |why: String| Error::DatasetNotCached {
            repo: file.repo.clone(),
            revision: file.revision.clone(),
            cache: self.cache.clone(),
            why,
            files: file.path.clone(),
        };
        if self.offline {
            return Err(not_cached("HF_HUB_OFFLINE is set".into()));
        }
        download(&self.cache, file).map_err(not_cached)
    }
}

/// The cached copy of `file`, if the cache has the revision and the file.
pub fn cached_dataset_file(cache: &Path, file: &HubFile) -> Option<PathBuf> {
    let repo_dir = cache.join(format!("datasets--{}", file.repo.replace('/', "--")));
    let is_commit = file.revision.len() == 40 && file.revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        file.revision.to_string()
    } else {
        std::fs::read_to_string(repo_dir.join("refs").join(&file.revision)).ok()?.trim().to_string()
    };
    let path = repo_dir.join("snapshots").join(commit).join(&file.path);
    path.is_file().then_some(path)
}

fn download(cache: &Path, file: &HubFile) -> std::result::Result<PathBuf, String> {
    use hf_hub::{api::sync::ApiBuilder, Repo, RepoType};
    let api = ApiBuilder::from_cache(hf_hub::Cache::new(cache.into()))
        .with_progress(true)
        .build()
        .map_err(|e| format!("cannot reach the hub: {e}"))?;
    let repo = api.repo(Repo::with_revision(file.repo.clone(), RepoType::Dataset, file.revision.clone()));
    repo.get(&file.path).map_err(|e| format!("downloading {} failed: {e}", file.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_files_through_refs_and_reports_missing_ones() {
        let file = HubFile::new("nyu-mll/glue", "main", "rte/train-00000-of-00001.parquet");
        let cache = tempfile::tempdir().unwrap();
        let access = HubAccess { cache: cache.path().into(), offline: true };
        let err = access.resolve(&file).unwrap_err().to_string();
        assert!(err.contains("nyu-mll/glue") && err.contains("rte/train-00000-of-00001.parquet"), "{err}");
        assert!(err.contains(&cache.path().display().to_string()) && err.contains("--repo-type dataset"), "{err}");

        let repo = cache.path().join("datasets--nyu-mll--glue");
        let snapshot = repo.join("snapshots/0123456789abcdef0123456789abcdef01234567/rte");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("train-00000-of-00001.parquet"), b"x").unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123456789abcdef0123456789abcdef01234567\n").unwrap();
        assert_eq!(access.resolve(&file).unwrap(), snapshot.join("train-00000-of-00001.parquet"));
    }
}
