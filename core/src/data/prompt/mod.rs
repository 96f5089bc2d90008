//! Patterns and verbalizers: how an example becomes the text a model reads, and which token
//! stands for each label.
//!
//! A [`PromptSpec`] is what a config says (a built-in style, or a user template, prefix and
//! words, and the [`Compat`] conventions); [`Prompt::new`] checks it against the task and the
//! tokenizer — every label word must be exactly one token — and then renders fine-tuning
//! queries, in-context demonstrations, contexts and queries, and encodes them, shortening
//! over-long inputs from the premise side.

pub mod family;
pub mod template;

use serde::{Deserialize, Serialize};

pub use family::{BuiltinPattern, PatternStyle, PromptFamily};
pub use template::Template;

use crate::data::dataset::Example;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Whose conventions turn a pattern into queries and demonstrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compat {
    /// Byte-identical to the text llmft's published runs fed the model (shared/DESIGN.md §4):
    /// the built-in patterns with llmft's literal `\n`s; a demonstration is
    /// `template + prefix + word` with the word's leading space dropped (llmft's
    /// `eval_utils.create_few_shot_context`); the in-context query is
    /// `f"{template} {prefix.strip()}"` (llmft's `eval.py`, so the minimal one ends in `? `); the
    /// fine-tuning query is the same without a trailing space when the prefix is blank (llmft's
    /// `ft.py` patterns in its `pattern_verbalizer_ft` scripts). `prefix` means llmft's
    /// `--target_prefix`, `separator` its `--separate_shots_by`.
    #[default]
    Llmft,
    /// DESIGN.md's patterns as written: real newlines, no space before one, every query is
    /// `template + prefix`, every demonstration `query + word` (the word brings its space).
    Clean,
}

impl Compat {
    /// Every mode, for listings.
    pub const ALL: [Compat; 2] = [Self::Llmft, Self::Clean];

    /// The name in configs and records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llmft => "llmft",
            Self::Clean => "clean",
        }
    }

    /// Parses `llmft` or `clean`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// A prompt as a config writes it; unset fields take the task's built-in values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// Built-in pattern (`minimal`, `gpt3`, `eval-harness`); default `minimal`.
    #[serde(default)]
    pub style: PatternStyle,
    /// Conventions: `llmft` (default; what llmft's published runs read) or `clean` (DESIGN.md's
    /// patterns with real newlines).
    #[serde(default)]
    pub compat: Compat,
    /// A user template with `{field}` placeholders, replacing the style's.
    pub template: Option<String>,
    /// Text between the template and the label word, replacing the style's (with `compat =
    /// "llmft"`, llmft's `--target_prefix`: the word follows without its leading space).
    pub prefix: Option<String>,
    /// Label words by label id (with their leading space, e.g. `" Yes"`), replacing the style's.
    pub words: Option<Vec<String>>,
    /// What separates in-context demonstrations, replacing the style's.
    pub separator: Option<String>,
}

/// A checked prompt: template, prefix, label words and their token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The template.
    pub template: Template,
    /// Text after the template, before the label word.
    pub prefix: String,
    /// Label words by label id.
    pub words: Vec<String>,
    /// The token id of each label word.
    pub word_ids: Vec<i64>,
    /// What separates in-context demonstrations.
    pub separator: String,
    /// Whose conventions build queries and demonstrations.
    pub compat: Compat,
    /// The task family it renders ([`PromptFamily::Text`] rows are documents, not queries).
    pub family: PromptFamily,
}

/// An encoded query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, starting with `</s>`.
    pub ids: Vec<i64>,
    /// Tokens cut from the premise to fit the length limit (0 when it fit).
    pub truncated_tokens: usize,
    /// The premise as shortened, when it was: the text the ids encode.
    pub premise: Option<String>,
}

impl Prompt {
    /// Resolves `spec` for a task of `family` with `num_labels` labels and checks every label
    /// word with `tokenizer`.
    pub fn new(family: PromptFamily, num_labels: usize, spec: &PromptSpec, tokenizer: &Tokenizer) -> Result<Self> {
        let builtin = family.pattern(spec.style);
        let (template, prefix, separator) = match spec.compat {
            Compat::Llmft => (builtin.template.to_string(), builtin.prefix.to_string(), builtin.separator.to_string()),
            Compat::Clean => {
                let readable = builtin.readable();
                (readable.template, readable.prefix, readable.separator)
            }
        };
        let template = Template::parse(spec.template.as_deref().unwrap_or(&template), family.fields())?;
        let words: Vec<String> = match &spec.words {
            Some(words) => words.clone(),
            None => builtin.words.iter().map(|w| w.to_string()).collect(),
        };
        if words.len() != num_labels && family != PromptFamily::Text {
            return Err(Error::Prompt(format!(
                "{} label words ({}) for a task with {num_labels} labels",
                words.len(),
                words.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        let word_ids = words.iter().map(|word| single_token(tokenizer, word)).collect::<Result<Vec<_>>>()?;
        let mut seen = word_ids.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != word_ids.len() {
            return Err(Error::Prompt(format!("label words {words:?} are not distinct tokens")));
        }
        Ok(Self {
            template,
            prefix: spec.prefix.clone().unwrap_or(prefix),
            words,
            word_ids,
            separator: spec.separator.clone().unwrap_or(separator),
            compat: spec.compat,
            family,
        })
    }

    /// What fine-tuning and zero-shot scoring read: the filled template and the answer cue, the
    /// label word to follow (llmft's `ft.py` input).
    pub fn query(&self, example: &Example) -> String {
        self.finish_query(self.template.render(example, None))
    }

    /// `filled` (a filled template) completed as a fine-tuning query.
    fn finish_query(&self, filled: String) -> String {
        match self.compat {
            Compat::Llmft if self.prefix.trim().is_empty() => filled,
            Compat::Llmft => format!("{filled} {}", self.prefix.trim()),
            Compat::Clean => filled + &self.prefix,
        }
    }

    /// What an in-context query reads after its context (llmft's `eval.py`:
    /// `f"{pattern} {target_prefix.strip()}"` for a non-empty prefix).
    pub fn icl_query(&self, example: &Example) -> String {
        match self.compat {
            Compat::Llmft if !self.prefix.is_empty() => {
                format!("{} {}", self.template.render(example, None), self.prefix.trim())
            }
            Compat::Llmft => self.template.render(example, None),
            Compat::Clean => self.query(example),
        }
    }

    /// A demonstration: the example with its label word.
    pub fn demonstration(&self, example: &Example) -> String {
        let word = self.words.get(example.label).map(String::as_str).unwrap_or_default();
        match self.compat {
            // llmft drops the token's `Ġ` (its leading space) after the target prefix.
            Compat::Llmft => {
                format!(
                    "{}{}{}",
                    self.template.render(example, None),
                    self.prefix,
                    word.strip_prefix(' ').unwrap_or(word)
                )
            }
            Compat::Clean => format!("{}{word}", self.query(example)),
        }
    }

    /// An in-context prefix: each demonstration followed by the separator (empty for none).
    pub fn context<'a>(&self, demonstrations: impl IntoIterator<Item = &'a Example>) -> String {
        demonstrations.into_iter().map(|e| format!("{}{}", self.demonstration(e), self.separator)).collect()
    }

    /// Token ids of the fine-tuning query, not shortened.
    pub fn encode(&self, tokenizer: &Tokenizer, example: &Example) -> Result<Vec<i64>> {
        tokenizer.encode(&self.query(example))
    }

    /// Token ids of `context + icl_query(example)`, encoded as one string (as llmft does, so
    /// BPE may merge across the boundary).
    pub fn encode_icl(&self, tokenizer: &Tokenizer, context: &str, example: &Example) -> Result<Vec<i64>> {
        tokenizer.encode(&format!("{context}{}", self.icl_query(example)))
    }

    /// Token ids of the fine-tuning query within `max_length` tokens: when too long, tokens
    /// are cut from the end of the premise (text1) until it fits, and the count is returned.
    /// `None` when the input cannot fit even with an empty premise (the caller drops and counts
    /// it, as llmft does). A text of any size costs only what the limit can use: the texts are
    /// cut to [`Tokenizer::prefix_within`] first.
    pub fn encode_within(
        &self,
        tokenizer: &Tokenizer,
        example: &Example,
        max_length: usize,
    ) -> Result<Option<Encoded>> {
        let (example, capped) = capped(tokenizer, example, max_length);
        if capped.hypothesis {
            return Ok(None);
        }
        let ids = self.encode(tokenizer, &example)?;
        if ids.len() <= max_length {
            return Ok(Some(Encoded { ids, truncated_tokens: 0, premise: None }));
        }
        let premise = tokenizer.encode_plain(&example.text1)?;
        let mut keep = premise.len().saturating_sub(ids.len() - max_length);
        loop {
            let shortened = tokenizer.decode(&premise[..keep])?;
            let ids = tokenizer.encode(&self.finish_query(self.template.render(&example, Some(&shortened))))?;
            if ids.len() <= max_length {
                return Ok(Some(Encoded { ids, truncated_tokens: premise.len() - keep, premise: Some(shortened) }));
            }
            if keep == 0 {
                return Ok(None);
            }
            // Re-tokenising at the cut can merge differently: step down by the overshoot.
            keep = keep.saturating_sub((ids.len() - max_length).max(1));
        }
    }

    /// Token ids of the query, or `None` when it is over `max_tokens` tokens (found without
    /// tokenizing more than the limit can use).
    pub fn encode_capped(
        &self,
        tokenizer: &Tokenizer,
        example: &Example,
        max_tokens: usize,
    ) -> Result<Option<Vec<i64>>> {
        let (example, capped) = capped(tokenizer, example, max_tokens);
        let ids = self.encode(tokenizer, &example)?;
        Ok((!capped.any() && ids.len() <= max_tokens).then_some(ids))
    }
}

/// Which texts of an example were cut to the tokenizer's prefix for a limit.
struct Capped {
    premise: bool,
    hypothesis: bool,
}

impl Capped {
    fn any(&self) -> bool {
        self.premise || self.hypothesis
    }
}

/// `example` with each text cut to the prefix that holds its first `max_tokens` tokens.
fn capped<'e>(
    tokenizer: &Tokenizer,
    example: &'e Example,
    max_tokens: usize,
) -> (std::borrow::Cow<'e, Example>, Capped) {
    let premise = tokenizer.prefix_within(&example.text1, max_tokens);
    let hypothesis = example.text2.as_deref().and_then(|t| tokenizer.prefix_within(t, max_tokens));
    let flags = Capped { premise: premise.is_some(), hypothesis: hypothesis.is_some() };
    if !flags.any() {
        return (std::borrow::Cow::Borrowed(example), flags);
    }
    let mut cut = example.clone();
    if let Some(p) = premise {
        cut.text1 = p.to_string();
    }
    if let Some(h) = hypothesis {
        cut.text2 = Some(h.to_string());
    }
    (std::borrow::Cow::Owned(cut), flags)
}

/// The one token of `word`, or an error naming the word and the tokens it splits into.
pub fn single_token(tokenizer: &Tokenizer, word: &str) -> Result<i64> {
    let ids = tokenizer.encode_plain(word)?;
    match ids.as_slice() {
        [id] => Ok(*id),
        _ => Err(Error::Prompt(format!(
            "label word `{word}` is {} tokens ({}), but each label word must be one token; pick another word or drop/add its leading space",
            ids.len(),
            tokenizer.tokens(&ids).iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(" ")
        ))),
    }
}

#[cfg(test)]
mod tests;
