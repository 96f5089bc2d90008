//! `text`: the user's own documents for language modelling (`--plugin lm`): pretraining on a
//! corpus, or supervised fine-tuning on prompt/response pairs. The rows come from `--file`
//! (see [`crate::data::text`] for the formats), or without one from the embedded tokenizer's
//! corpus (67 lines, one document each); every 20th row is held out and scored by token-level
//! loss and perplexity.

use crate::data::dataset::{Dataset, Example};
use crate::data::prompt::PromptFamily;
use crate::data::task::{DataOptions, FileRows, TaskDef};
use crate::data::text::{self, LABEL_NAMES};
use crate::error::Result;

fn load(split: &str, options: &DataOptions) -> Result<Dataset> {
    let Some(local) = &options.local else {
        // Without a file: the embedded tokenizer's corpus, one document per line.
        let lines = crate::model::tiny::CORPUS.lines().filter(|l| !l.trim().is_empty());
        let all: Vec<Example> = lines.enumerate().map(|(i, l)| Example::new(i as i64, l, None, 0)).collect();
        return Ok(text::split("text/embedded", &all, split));
    };
    let all = text::read(&local.path, &local.columns)?;
    Ok(text::split(&format!("text/{}", local.path.display()), &all, split))
}

inventory::submit! {
    TaskDef {
        name: "text",
        about: "your documents (--file .txt/.jsonl/.parquet) for language modelling and SFT (--plugin lm)",
        source: "--file, else the embedded corpus (every 20th row held out)",
        label_names: &LABEL_NAMES,
        splits: &["train", "validation"],
        train_split: Some("train"),
        eval_split: "validation",
        ood: &[],
        metrics: &[],
        prompt: PromptFamily::Text,
        load,
        subsets: |_, _, _| Vec::new(),
        file: FileRows::BY_TASK,
    }
}
