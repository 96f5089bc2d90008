//! Tasks and eval sets: what a run trains on and evaluates on, registered with `inventory` so
//! that adding one is a single file in [`super::tasks`] with an `inventory::submit!` block.
//!
//! A [`TaskDef`] knows its text fields, label names, splits, which split is the in-domain eval
//! set, which other registered sets are its out-of-domain eval sets, which extra metrics it
//! reports, its default prompt, and how to load a split. Eval-only sets (HANS, PAWS-QQP, …)
//! are tasks with no training split.

use serde::Serialize;

use super::dataset::{Dataset, EvalSet, Subset};
use super::prompt::PromptFamily;
use super::source::LocalSource;
use super::synthetic::SyntheticConfig;
use crate::error::{Error, Result};
use crate::hub::Hub;

/// Metrics reported beside accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Macro-averaged F1 over the labels (QQP, PAWS-QQP).
    MacroF1,
    /// Matthews correlation coefficient (CoLA).
    Matthews,
}

/// Which HANS examples are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HansScope {
    /// The lexical-overlap heuristic only (10,000 rows), scored per label, as the paper reports.
    #[default]
    LexicalOverlap,
    /// All three heuristics (30,000 rows), scored per heuristic, per label and per subcase.
    All,
}

/// Everything a loader may need besides the split name.
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// The HF cache and whether downloads are allowed.
    pub hub: Hub,
    /// Which HANS rows to evaluate.
    pub hans: HansScope,
    /// Sizes and seed of the embedded synthetic task.
    pub synthetic: SyntheticConfig,
    /// A user's file replacing the task's own data (every split reads it).
    pub local: Option<LocalSource>,
}

impl DataOptions {
    /// The user's HF cache, `HF_HUB_OFFLINE`, the paper's HANS scope, the default synthetic task.
    pub fn from_env() -> Self {
        Self { hub: Hub::from_env(), hans: HansScope::default(), synthetic: SyntheticConfig::default(), local: None }
    }
}

/// A registered task or eval set.
#[derive(Debug)]
pub struct TaskDef {
    /// Name used on the command line and in configs, e.g. `mnli`.
    pub name: &'static str,
    /// One line for `ftlab data list`.
    pub about: &'static str,
    /// Where the data comes from, for `ftlab data list`.
    pub source: &'static str,
    /// Label names, indexed by label id.
    pub label_names: &'static [&'static str],
    /// Every split `load` accepts.
    pub splits: &'static [&'static str],
    /// The split few-shot training sets are drawn from; `None` for eval-only sets.
    pub train_split: Option<&'static str>,
    /// The split evaluated in-domain (or the only split of an eval-only set).
    pub eval_split: &'static str,
    /// Registered eval-only sets evaluated out of domain.
    pub ood: &'static [&'static str],
    /// Metrics beside accuracy.
    pub metrics: &'static [Metric],
    /// The default patterns and verbalizer.
    pub prompt: PromptFamily,
    /// Loads one split (after the task's filtering).
    pub load: fn(split: &str, options: &DataOptions) -> Result<Dataset>,
    /// The subsets of an eval split scored separately.
    pub subsets: fn(name: &str, data: &Dataset, options: &DataOptions) -> Vec<Subset>,
    /// How a user's file (`--file`) becomes this task's rows.
    pub file: FileRows,
}

/// How a user's file becomes a task's rows: `--file` replaces where the rows come from, never
/// what the task does to them (MNLI's binarization drops neutral and maps contradiction to 1
/// whether the rows come from the hub or from GLUE's `dev_matched.tsv`).
#[derive(Debug, Clone, Copy)]
pub struct FileRows {
    /// The labels as the task's source files write them (names or ids); `None`: the task's own.
    pub labels: Option<&'static [&'static str]>,
    /// The task's processing of the rows read; `None`: the rows as read.
    pub process: Option<fn(Dataset, &DataOptions) -> Result<Dataset>>,
    /// The task's `load` reads the file itself, split by split (the `text` task's formats).
    pub by_task: bool,
}

impl FileRows {
    /// A file's rows are the task's rows, labelled with the task's labels.
    pub const AS_READ: FileRows = FileRows { labels: None, process: None, by_task: false };
    /// The task's own `load` reads the file.
    pub const BY_TASK: FileRows = FileRows { labels: None, process: None, by_task: true };
}

inventory::collect!(TaskDef);

/// Every registered task, sorted by name.
pub fn all() -> Vec<&'static TaskDef> {
    let mut tasks: Vec<&'static TaskDef> = inventory::iter::<TaskDef>.into_iter().collect();
    tasks.sort_by_key(|t| t.name);
    tasks
}

/// The task called `name`.
pub fn find(name: &str) -> Result<&'static TaskDef> {
    all().into_iter().find(|t| t.name == name).ok_or_else(|| Error::UnknownTask {
        name: name.into(),
        known: all().iter().map(|t| t.name).collect::<Vec<_>>().join(", "),
    })
}

/// The default subsets: one per label, named `{name}-{label}`.
pub fn per_label_subsets(name: &str, data: &Dataset, _options: &DataOptions) -> Vec<Subset> {
    Subset::per_label(data, name)
}

impl TaskDef {
    /// The text fields, as pattern placeholders and `--columns` keys: `["premise",
    /// "hypothesis"]`, `["question1", "question2"]` or `["sentence"]`.
    pub fn fields(&self) -> &'static [&'static str] {
        self.prompt.fields()
    }

    /// Loads `split`, or the user's file when one is given (whatever the split).
    pub fn load_split(&self, split: &str, options: &DataOptions) -> Result<Dataset> {
        if let Some(local) = options.local.as_ref().filter(|_| !self.file.by_task) {
            let name = format!("{}/{}", self.name, local.path.display());
            let rows = local.load(&name, self.file.labels.unwrap_or(self.label_names))?;
            return Ok(match self.file.process {
                Some(process) => process(rows, options)?,
                None => rows,
            });
        }
        if !self.splits.contains(&split) {
            return Err(Error::DataOption(format!(
                "task `{}` has no split `{split}`; it has {}",
                self.name,
                self.splits.join(", ")
            )));
        }
        (self.load)(split, options)
    }

    /// The pool few-shot training sets are drawn from.
    pub fn train_pool(&self, options: &DataOptions) -> Result<Dataset> {
        match (self.train_split, &options.local) {
            (Some(split), Some(_)) if self.file.by_task => self.load_split(split, options),
            // A user's file is the whole pool, whichever split is asked for.
            (_, Some(_)) => self.load_split(self.eval_split, options),
            (Some(split), None) => self.load_split(split, options),
            (None, None) => Err(Error::DataOption(format!(
                "`{}` is an eval-only set with no training split; train on a task that lists it as out-of-domain",
                self.name
            ))),
        }
    }

    /// This set's eval split with its subsets.
    pub fn eval_set(&self, options: &DataOptions, in_domain: bool) -> Result<EvalSet> {
        let data = self.load_split(self.eval_split, options)?;
        let subsets = (self.subsets)(self.name, &data, options);
        Ok(EvalSet { name: self.name.into(), in_domain, data, subsets })
    }

    /// The in-domain eval set followed by the out-of-domain ones (all of [`Self::ood`] when
    /// `ood` is `None`). A user's file replaces only the in-domain set.
    pub fn eval_sets(&self, options: &DataOptions, ood: Option<&[&str]>) -> Result<Vec<EvalSet>> {
        let mut sets = vec![self.eval_set(options, true)?];
        let ood_options = DataOptions { local: None, ..options.clone() };
        for name in ood.unwrap_or(self.ood) {
            sets.push(find(name)?.eval_set(&ood_options, false)?);
        }
        Ok(sets)
    }
}
