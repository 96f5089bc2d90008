//! The built-in patterns and label words (shared/DESIGN.md §4), per family of tasks, as the
//! strings llmft's published runs delivered to Python.
//!
//! A pattern is llmft's triple: a template (`--pattern`), an answer prefix (`--target_prefix`)
//! and a separator between in-context demonstrations (`--separate_shots_by`). llmft's scripts
//! pass them inside bash double quotes, so every `\n` in them reached the model as a backslash
//! and an `n`: the tables below hold exactly those characters (`\\n` in Rust). The sources are
//! llmft's `scripts/in_context/{mnli,qqp,cola}/run_*.sh` (in-context) and
//! `scripts/pattern_verbalizer_ft/mnli/run*.sh` (fine-tuning, whose `--pattern` is the
//! in-context template followed by the stripped prefix: see [`super::Compat`]).
//! [`BuiltinPattern::readable`] gives the same patterns as DESIGN.md writes them, with real
//! newlines, for `prompt.compat = "clean"`.
//!
//! Patterns llmft has no script for are choices made here, in llmft's conventions: QQP's gpt3
//! pattern, the QQP/PAWS eval-harness one from llmft's commented alternative, CoLA's eval-harness
//! one from lm-evaluation-harness's GLUE prompt, and the 3-class patterns with ` Yes`/` Maybe`/
//! ` No` and lm-evaluation-harness's ` True`/` Neither`/` False`.

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
    /// Plain text for language modelling (the `text` task): a document, or a prompt and its
    /// response; no label words.
    Text,
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

/// A built-in pattern: template, answer prefix, label words by label id, separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinPattern {
    /// The template, with the family's placeholders (llmft's `--pattern` for in-context runs).
    pub template: &'static str,
    /// llmft's `--target_prefix`: what follows the template in a demonstration, before the label
    /// word without its leading space.
    pub prefix: &'static str,
    /// Label words by label id, each with its leading space (the token OPT reads after a word).
    pub words: &'static [&'static str],
    /// What follows each in-context demonstration.
    pub separator: &'static str,
}

/// The same pattern with llmft's artefacts removed, as DESIGN.md writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadablePattern {
    /// The template, with real newlines and no space before one.
    pub template: String,
    /// Text between the template and the label word (which brings its own space).
    pub prefix: String,
    /// What follows each in-context demonstration.
    pub separator: String,
}

impl BuiltinPattern {
    /// Real newlines for llmft's literal `\n`, no space before a newline, and the prefix without
    /// its trailing space (the label word brings one): DESIGN.md's patterns.
    pub fn readable(&self) -> ReadablePattern {
        let newlines = |s: &str| s.replace(" \\n", "\n").replace("\\n", "\n");
        ReadablePattern {
            template: newlines(self.template),
            prefix: newlines(self.prefix).trim_end().to_string(),
            separator: newlines(self.separator),
        }
    }
}

const fn pattern(template: &'static str, prefix: &'static str, words: &'static [&'static str]) -> BuiltinPattern {
    BuiltinPattern { template, prefix, words, separator: BLANK_LINE }
}

/// llmft's `--separate_shots_by "\n\n"`: four characters.
const BLANK_LINE: &str = "\\n\\n";
const YES_NO: &[&str] = &[" Yes", " No"];
const NO_YES: &[&str] = &[" No", " Yes"];
const TRUE_FALSE: &[&str] = &[" True", " False"];
const YES_MAYBE_NO: &[&str] = &[" Yes", " Maybe", " No"];

impl PromptFamily {
    /// The text fields, as placeholders and `--columns` keys.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Self::Nli | Self::Nli3 => &["premise", "hypothesis"],
            Self::Paraphrase => &["question1", "question2"],
            Self::Acceptability => &["sentence"],
            Self::Text => &["text", "response"],
        }
    }

    /// The built-in pattern of `style`, as llmft's scripts deliver it.
    pub fn pattern(self, style: PatternStyle) -> BuiltinPattern {
        use PatternStyle::*;
        match (self, style) {
            (Self::Nli, Minimal) => pattern("{premise} {hypothesis} ?", " ", YES_NO),
            (Self::Nli, Gpt3) => pattern("{premise} question: {hypothesis} Yes or No?", " answer: ", YES_NO),
            (Self::Nli, EvalHarness) => {
                pattern("{premise} \\nQuestion: {hypothesis} True or False?", "\\nAnswer: ", TRUE_FALSE)
            }
            (Self::Nli3, Minimal) => pattern("{premise} {hypothesis} ?", " ", YES_MAYBE_NO),
            (Self::Nli3, Gpt3) => {
                pattern("{premise} question: {hypothesis} Yes, No, or Maybe?", " answer: ", YES_MAYBE_NO)
            }
            (Self::Nli3, EvalHarness) => pattern(
                "{premise} \\nQuestion: {hypothesis} True, False or Neither?",
                "\\nAnswer: ",
                &[" True", " Neither", " False"],
            ),
            (Self::Paraphrase, Minimal) => pattern("{question1} {question2} ?", " ", NO_YES),
            (Self::Paraphrase, Gpt3) => pattern(
                "{question1} question: {question2} Do both questions ask the same thing? Yes or No?",
                " answer: ",
                NO_YES,
            ),
            (Self::Paraphrase, EvalHarness) => pattern(
                "Question 1: {question1}\\nQuestion 2: {question2}\\nQuestion: Do both questions ask the same thing?",
                " Answer: ",
                NO_YES,
            ),
            // llmft's CoLA script separates demonstrations by a space.
            (Self::Acceptability, Minimal) => BuiltinPattern { separator: " ", ..pattern("{sentence} ?", " ", NO_YES) },
            (Self::Acceptability, Gpt3) => pattern("grammatical: {sentence} Yes or No?", " answer: ", NO_YES),
            (Self::Acceptability, EvalHarness) => {
                pattern("{sentence} \\nQuestion: Does this sentence make sense?", "\\nAnswer: ", NO_YES)
            }
            // Text is read as it is, whatever the style.
            (Self::Text, _) => pattern("{text}", "", &[]),
        }
    }
}
