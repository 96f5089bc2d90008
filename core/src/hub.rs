//! The Hugging Face hub cache, shared with Python's `huggingface_hub`: where it is, whether ftlab
//! may download into it, the cached snapshot of a repository revision, and a download handle.
//! Models ([`crate::model::source`]) and task data ([`crate::data::source::hub`]) both go
//! through it, so a cache filled by `transformers` or `datasets` users serves ftlab too.
//!
//! The layout is huggingface_hub's: `<cache>/{models,datasets}--{org}--{name}/refs/{revision}`
//! holds a commit hash and `snapshots/{hash}/` the files. The cache folder is `$HF_HUB_CACHE`,
//! else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
//! With `HF_HUB_OFFLINE=1` nothing is downloaded.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Repo, RepoType};

/// The two kinds of hub repository ftlab reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model (`models--org--name`).
    Model,
    /// A dataset (`datasets--org--name`).
    Dataset,
}

/// Where hub files are looked for, and whether they may be downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// The hub cache folder.
    pub cache: PathBuf,
    /// Never download (`HF_HUB_OFFLINE=1`): a missing file is an error saying what to fetch.
    pub offline: bool,
}

impl Hub {
    /// The user's cache and `HF_HUB_OFFLINE`, read from the environment as huggingface_hub does.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let cache = var("HF_HUB_CACHE").unwrap_or_else(|| {
            let home = var("HF_HOME").unwrap_or_else(|| {
                var("XDG_CACHE_HOME")
                    .unwrap_or_else(|| var("HOME").unwrap_or_else(|| PathBuf::from(".")).join(".cache"))
                    .join("huggingface")
            });
            home.join("hub")
        });
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Self { cache, offline }
    }

    /// The snapshot folder of `repo` at `revision` (a branch, a ref such as
    /// `refs/convert/parquet`, or a commit hash), if the cache has one.
    pub fn snapshot(&self, kind: RepoKind, repo: &str, revision: &str) -> Option<PathBuf> {
        let prefix = match kind {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        };
        let repo_dir = self.cache.join(format!("{prefix}--{}", repo.replace('/', "--")));
        let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
        let commit = if is_commit {
            revision.to_string()
        } else {
            std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?.trim().to_string()
        };
        let snapshot = repo_dir.join("snapshots").join(commit);
        snapshot.is_dir().then_some(snapshot)
    }

    /// A handle that downloads files of `repo` at `revision` into the cache (with a progress
    /// bar); the error says why the hub cannot be used.
    pub fn repo(&self, kind: RepoKind, repo: &str, revision: &str) -> Result<ApiRepo, String> {
        let api = ApiBuilder::from_cache(hf_hub::Cache::new(self.cache.clone()))
            .with_progress(true)
            .build()
            .map_err(|e| format!("cannot reach the hub: {e}"))?;
        let kind = match kind {
            RepoKind::Model => RepoType::Model,
            RepoKind::Dataset => RepoType::Dataset,
        };
        Ok(api.repo(Repo::with_revision(repo.into(), kind, revision.into())))
    }

    /// Downloads `path` of `repo` (unless offline) and returns where the cache put it.
    pub fn download(&self, kind: RepoKind, repo: &str, revision: &str, path: &str) -> Result<PathBuf, String> {
        if self.offline {
            return Err("HF_HUB_OFFLINE is set".into());
        }
        self.repo(kind, repo, revision)?.get(path).map_err(|e| format!("downloading {path} failed: {e}"))
    }
}

/// The folder a cached file lives in.
pub fn folder_of(file: &Path) -> Result<PathBuf, String> {
    file.parent().map(Path::to_path_buf).ok_or_else(|| "the cache returned a path with no folder".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_found_through_refs_or_commits() {
        let cache = tempfile::tempdir().unwrap();
        let hub = Hub { cache: cache.path().into(), offline: true };
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(hub.snapshot(RepoKind::Model, "org/name", "main"), None);
        let repo = cache.path().join("models--org--name");
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
        let snapshot = Some(repo.join("snapshots").join(commit));
        assert_eq!(hub.snapshot(RepoKind::Model, "org/name", "main"), snapshot);
        assert_eq!(hub.snapshot(RepoKind::Model, "org/name", commit), snapshot);
        assert_eq!(hub.snapshot(RepoKind::Dataset, "org/name", "main"), None, "datasets live elsewhere");
        assert_eq!(hub.download(RepoKind::Model, "org/name", "main", "x").unwrap_err(), "HF_HUB_OFFLINE is set");
    }
}
