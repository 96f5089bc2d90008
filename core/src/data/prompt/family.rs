//! The built-in patterns and label words (shared/DESIGN.md §4), per family of tasks.
//!
//! A pattern is a template plus an answer prefix; the model predicts the label word right
//! after the prefix. Label words carry their leading space (` Yes`), because that is the token
//! OPT's tokenizer produces after a word. In-context demonstrations are `query + word`.
//!
//! Differences from llmft's scripts, on purpose: llmft passes `\n` inside bash double quotes,
//! so its eval-harness pattern and its `\n\n` demonstration separator contain a literal
//! backslash and `n`; here they are newlines, as DESIGN.md writes them. llmft's minimal ICL
//! query also ends in a space (`" " + prefix.strip()`), which then precedes `ĠYes`; here the
//! query ends at `?` and the word brings its own space.
//!
//! DESIGN.md fixes the NLI patterns and the QQP/CoLA minimal ones. The others are choices made
//! here: CoLA's gpt3 pattern is llmft's commented alternative (`grammatical: … Yes or No?`),
//! the QQP and CoLA eval-harness patterns follow lm-evaluation-harness's GLUE prompts with
//! ` No`/` Yes` as words, and the 3-class patterns use ` Yes`/` Maybe`/` No` and
//! lm-evaluation-harness's ` True`/` Neither`/` False`.

use serde::{Deserialize, Serialize};

/// A family of tasks sharing fields, patterns and label words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFamily {
    /// Binary NLI (MNLI binarized, RTE, HANS, the synthetic task): label 0 = entailment.
    Nli,
    /// 3-class NLI (entailment, neutral, contradiction).
    Nli3,
    /// Paraphrase questions (QQP, PAWS-QQP): label 0 = not a duplicate.
    Paraphrase,
    /// Grammatical acceptability (CoLA): label 0 = unacceptable.
    Acceptability,
}

/// Which built-in pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatternStyle {
    /// `{premise} {hypothesis} ?` — the paper's pattern for fine-tuning.
    #[default]
    Minimal,
    /// GPT-3's: `{premise} question: {hypothesis} Yes or No?` + ` answer:`.
    Gpt3,
    /// lm-evaluation-harness's: `{premise}\nQuestion: {hypothesis} True or False?` + `\nAnswer:`.
    EvalHarness,
}

impl PatternStyle {
    /// Every style, for listings.
    pub const ALL: [PatternStyle; 3] = [Self::Minimal, Self::Gpt3, Self::EvalHarness];

    /// The style's name in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Minimal => "minimal",
            Self::Gpt3 => "gpt3",
            Self::EvalHarness => "eval-harness",
        }
    }

    /// Parses `minimal`, `gpt3` or `eval-harness`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A built-in pattern: template, answer prefix, label words by label id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinPattern {
    /// The template, with the family's placeholders.
    pub template: &'static str,
    /// Text between the filled template and the label word.
    pub prefix: &'static str,
    /// Label words by label id, each with its leading space.
    pub words: &'static [&'static str],
}

const fn pattern(template: &'static str, prefix: &'static str, words: &'static [&'static str]) -> BuiltinPattern {
    BuiltinPattern { template, prefix, words }
}

const YES_NO: &[&str] = &[" Yes", " No"];
const NO_YES: &[&str] = &[" No", " Yes"];

impl PromptFamily {
    /// The text fields, as placeholders and `--columns` keys.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Self::Nli | Self::Nli3 => &["premise", "hypothesis"],
            Self::Paraphrase => &["question1", "question2"],
            Self::Acceptability => &["sentence"],
        }
    }

    /// What separates in-context demonstrations (llmft: a blank line; a space for CoLA).
    pub fn separator(self) -> &'static str {
        match self {
            Self::Acceptability => " ",
            _ => "\n\n",
        }
    }

    /// The built-in pattern of `style`.
    pub fn pattern(self, style: PatternStyle) -> BuiltinPattern {
        use PatternStyle::*;
        match (self, style) {
            (Self::Nli, Minimal) => pattern("{premise} {hypothesis} ?", "", YES_NO),
            (Self::Nli, Gpt3) => pattern("{premise} question: {hypothesis} Yes or No?", " answer:", YES_NO),
            (Self::Nli, EvalHarness) => {
                pattern("{premise}\nQuestion: {hypothesis} True or False?", "\nAnswer:", &[" True", " False"])
            }
            (Self::Nli3, Minimal) => pattern("{premise} {hypothesis} ?", "", &[" Yes", " Maybe", " No"]),
            (Self::Nli3, Gpt3) => {
                pattern("{premise} question: {hypothesis} Yes, No, or Maybe?", " answer:", &[" Yes", " Maybe", " No"])
            }
            (Self::Nli3, EvalHarness) => pattern(
                "{premise}\nQuestion: {hypothesis} True, False or Neither?",
                "\nAnswer:",
                &[" True", " Neither", " False"],
            ),
            (Self::Paraphrase, Minimal) => pattern("{question1} {question2} ?", "", NO_YES),
            (Self::Paraphrase, Gpt3) => pattern(
                "{question1} question: {question2} Do both questions ask the same thing? Yes or No?",
                " answer:",
                NO_YES,
            ),
            (Self::Paraphrase, EvalHarness) => pattern(
                "Question 1: {question1}\nQuestion 2: {question2}\nQuestion: Do both questions ask the same thing?",
                "\nAnswer:",
                NO_YES,
            ),
            (Self::Acceptability, Minimal) => pattern("{sentence} ?", "", NO_YES),
            (Self::Acceptability, Gpt3) => pattern("grammatical: {sentence} Yes or No?", " answer:", NO_YES),
            (Self::Acceptability, EvalHarness) => {
                pattern("{sentence}\nQuestion: Does this sentence make sense?", "\nAnswer:", NO_YES)
            }
        }
    }
}
