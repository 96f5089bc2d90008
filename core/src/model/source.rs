//! Where a model comes from: the embedded tiny model, a local folder, or a hub id resolved
//! through the Hugging Face cache ([`crate::hub`]), so ftlab shares the cache Python users
//! already have.

use std::path::{Path, PathBuf};

use super::checkpoint::{WeightFiles, WeightsFormat};
use super::config::OptConfig;
use crate::error::{Error, Result};
use crate::hub::{folder_of, Hub, RepoKind};

/// The name of the embedded model.
pub const EMBEDDED: &str = "tiny-opt";
/// The embedded model's shape and tokenizer, randomly initialised (for tests that need a model
/// that knows nothing, and as the start of its pretraining).
pub const EMBEDDED_RANDOM: &str = "tiny-opt-random";

/// A model as the user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// The built-in tiny OPT: pretrained (`tiny-opt`) or randomly initialised (`tiny-opt-random`).
    Embedded {
        /// `tiny-opt-random`.
        random: bool,
    },
    /// A local folder holding `config.json`, weights and tokenizer files.
    Dir(PathBuf),
    /// A hub repository, `org/name` or `org/name@revision` (branch, tag or commit hash).
    Hub {
        /// `org/name`.
        repo: String,
        /// Branch, tag or commit; `main` by default.
        revision: String,
    },
}

impl ModelSpec {
    /// Parses `tiny-opt`, `tiny-opt-random`, a path to an existing folder, or `org/name[@revision]`.
    pub fn parse(spec: &str) -> Result<Self> {
        if spec == EMBEDDED || spec == EMBEDDED_RANDOM {
            return Ok(Self::Embedded { random: spec == EMBEDDED_RANDOM });
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Self::Dir(path.into()));
        }
        let looks_like_path = spec.starts_with(['.', '/', '~']) || spec.matches('/').count() != 1;
        if looks_like_path || path.exists() {
            return Err(Error::UnknownModel(spec.into()));
        }
        let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        Ok(Self::Hub { repo: repo.into(), revision: revision.into() })
    }
}

/// The files of a model found on disk.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// The weights.
    pub weights: WeightFiles,
    /// The folder with `tokenizer.json` or `vocab.json` + `merges.txt`.
    pub tokenizer_dir: PathBuf,
    /// The commit hash of a hub snapshot, when known.
    pub revision: Option<String>,
}

impl ModelFiles {
    /// Finds config, weights and tokenizer in a local folder.
    pub fn in_dir(dir: &Path, prefer: Option<WeightsFormat>) -> Result<Self> {
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(Error::Io {
                path: config,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no config.json in the model folder"),
            });
        }
        Ok(Self { config, weights: WeightFiles::discover(dir, prefer)?, tokenizer_dir: dir.into(), revision: None })
    }

    /// Finds a hub model in the user's HF cache, downloading the missing files unless
    /// `HF_HUB_OFFLINE` is set.
    pub fn from_hub(repo: &str, revision: &str, prefer: Option<WeightsFormat>) -> Result<Self> {
        Self::from_hub_cache(&Hub::from_env(), repo, revision, prefer)
    }

    /// Finds a hub model in `hub`'s cache; when it is not there, downloads it into the cache
    /// unless offline, in which case the error lists the files to fetch.
    pub fn from_hub_cache(hub: &Hub, repo: &str, revision: &str, prefer: Option<WeightsFormat>) -> Result<Self> {
        let complete = |snapshot: PathBuf| -> Option<Self> {
            let mut files = Self::in_dir(&snapshot, prefer).ok()?;
            files.revision = snapshot.file_name().map(|s| s.to_string_lossy().into_owned());
            tokenizer_present(&snapshot).then_some(files)
        };
        if let Some(files) = hub.snapshot(RepoKind::Model, repo, revision).and_then(complete) {
            return Ok(files);
        }
        let not_cached = |why: String| Error::NotCached {
            repo: repo.into(),
            cache: hub.cache.clone(),
            why,
            files: "config.json model.safetensors vocab.json merges.txt".into(),
        };
        if hub.offline {
            return Err(not_cached("HF_HUB_OFFLINE is set".into()));
        }
        let snapshot = download(hub, repo, revision, prefer).map_err(not_cached)?;
        complete(snapshot).ok_or_else(|| not_cached("the download left an incomplete snapshot".into()))
    }
}

/// The configuration of `spec` alone: for a hub model only `config.json` is fetched, so
/// inspecting a 30b model does not download its weights.
pub fn config_of(spec: &str) -> Result<OptConfig> {
    match ModelSpec::parse(spec)? {
        ModelSpec::Embedded { .. } => super::tiny::config(),
        ModelSpec::Dir(dir) => OptConfig::from_file(&dir.join("config.json")),
        ModelSpec::Hub { repo, revision } => {
            let hub = Hub::from_env();
            let cached = hub.snapshot(RepoKind::Model, &repo, &revision).map(|s| s.join("config.json"));
            if let Some(config) = cached.filter(|c| c.is_file()) {
                return OptConfig::from_file(&config);
            }
            let config = hub.download(RepoKind::Model, &repo, &revision, "config.json").map_err(|why| {
                Error::NotCached { repo: repo.clone(), cache: hub.cache.clone(), why, files: "config.json".into() }
            })?;
            OptConfig::from_file(&config)
        }
    }
}

fn tokenizer_present(dir: &Path) -> bool {
    dir.join("tokenizer.json").is_file() || (dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file())
}

/// Downloads config, weights and tokenizer into the cache with hf-hub; returns the snapshot.
fn download(
    hub: &Hub,
    repo: &str,
    revision: &str,
    prefer: Option<WeightsFormat>,
) -> std::result::Result<PathBuf, String> {
    let repo = hub.repo(RepoKind::Model, repo, revision)?;
    let config = repo.get("config.json").map_err(|e| format!("downloading config.json failed: {e}"))?;
    let order = match prefer {
        Some(WeightsFormat::Pickle) => [WeightsFormat::Pickle, WeightsFormat::Safetensors],
        _ => [WeightsFormat::Safetensors, WeightsFormat::Pickle],
    };
    let mut weights = Err("the repository has no model.safetensors or pytorch_model.bin (nor an index)".to_string());
    'formats: for format in order {
        let (single, index) = format.file_names();
        if repo.get(single).is_ok() {
            weights = Ok(());
            break;
        }
        if let Ok(index_path) = repo.get(index) {
            let shards = super::checkpoint::shard_files_named(&index_path).map_err(|e| e.to_string())?;
            for shard in shards {
                repo.get(&shard).map_err(|e| format!("downloading {shard} failed: {e}"))?;
            }
            weights = Ok(());
            break 'formats;
        }
    }
    weights?;
    if repo.get("tokenizer.json").is_err() {
        for file in ["vocab.json", "merges.txt"] {
            repo.get(file).map_err(|e| format!("downloading {file} failed: {e}"))?;
        }
    }
    folder_of(&config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(ModelSpec::parse("tiny-opt").unwrap(), ModelSpec::Embedded { random: false });
        assert_eq!(ModelSpec::parse("tiny-opt-random").unwrap(), ModelSpec::Embedded { random: true });
        assert_eq!(
            ModelSpec::parse("facebook/opt-125m").unwrap(),
            ModelSpec::Hub { repo: "facebook/opt-125m".into(), revision: "main".into() }
        );
        assert_eq!(
            ModelSpec::parse("facebook/opt-350m@v1").unwrap(),
            ModelSpec::Hub { repo: "facebook/opt-350m".into(), revision: "v1".into() }
        );
        let err = ModelSpec::parse("./no/such/dir").unwrap_err().to_string();
        assert!(err.contains("./no/such/dir"), "{err}");
    }
}
