//! Pattern templates: text with `{field}` placeholders, parsed once and filled per example.
//!
//! Placeholders are the task's field names (`{premise}`, `{hypothesis}`, `{question1}`,
//! `{sentence}`, …) or llmft's positional `{text1}` / `{text2}`; `{{` and `}}` are literal braces.
//! An unknown placeholder is an error naming it and the ones allowed.

use crate::data::dataset::Example;
use crate::error::{Error, Result};

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// The example's text1 (0) or text2 (1).
    Field(usize),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `source` for a task whose text fields are `fields` (one or two names).
    pub fn parse(source: &str, fields: &[&str]) -> Result<Self> {
        let bad = |message: String| Error::Prompt(format!("pattern `{source}`: {message}"));
        let mut pieces = vec![];
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    let field = field_index(&name, fields).ok_or_else(|| {
                        let mut allowed: Vec<String> = fields.iter().map(|f| format!("{{{f}}}")).collect();
                        allowed.extend(["{text1}".to_string()]);
                        if fields.len() > 1 {
                            allowed.push("{text2}".into());
                        }
                        bad(format!("unknown placeholder `{{{name}}}`; use {}", allowed.join(", ")))
                    })?;
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field(field));
                }
                '}' => return Err(bad("a lone `}` (write `}}` for a literal brace)".into())),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        if !pieces.iter().any(|p| matches!(p, Piece::Field(0))) {
            return Err(bad(format!("it never uses `{{{}}}`", fields[0])));
        }
        Ok(Self { source: source.into(), pieces })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Fills the placeholders from `example`, with `text1` replaced by `text1_override` when
    /// given (how over-long inputs are shortened from the premise side).
    pub fn render(&self, example: &Example, text1_override: Option<&str>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(0) => out.push_str(text1_override.unwrap_or(&example.text1)),
                Piece::Field(_) => out.push_str(example.text2.as_deref().unwrap_or_default()),
            }
        }
        out
    }
}

fn field_index(name: &str, fields: &[&str]) -> Option<usize> {
    match name {
        "text1" => Some(0),
        "text2" if fields.len() > 1 => Some(1),
        _ => fields.iter().position(|f| *f == name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_named_and_positional_placeholders() {
        let example = Example::new(0, "A man sleeps.", Some("A person rests.".into()), 0);
        let fields = ["premise", "hypothesis"];
        let template = Template::parse("{premise} {{x}} {text2} ?", &fields).unwrap();
        assert_eq!(template.render(&example, None), "A man sleeps. {x} A person rests. ?");
        assert_eq!(template.render(&example, Some("A man")), "A man {x} A person rests. ?");
    }

    #[test]
    fn rejects_unknown_placeholders() {
        let err = Template::parse("{sentence} {hypothesis}", &["sentence"]).unwrap_err().to_string();
        assert!(err.contains("unknown placeholder `{hypothesis}`") && err.contains("{sentence}"), "{err}");
        assert!(Template::parse("{hypothesis} only", &["premise", "hypothesis"]).is_err());
        assert!(Template::parse("{premise} }", &["premise", "hypothesis"]).is_err());
    }
}
