//! Plain text for language modelling (the `text` task): documents read from a user's file,
//! split into training and held-out rows, and encoded with the span a next-token loss reads.
//!
//! A row is a document (`text1`), or a prompt (`text1`) with its response (`text2`) for
//! supervised fine-tuning, where the loss reads only the response. Files:
//! - `.txt`: one document per blank-line-separated block (lines inside a block keep their
//!   newlines);
//! - `.jsonl` / `.parquet`: a `text` column, or `prompt` and `response` columns (other names
//!   with `--columns text=…,response=…`).
//!
//! Every [`HELD_OUT_EVERY`]-th row (rows 20, 40, … counted from 1) is held out for the
//! perplexity the run reports, so a file sorted by topic or source still has them all in both.

use std::path::Path;

use super::batch::EncodedExample;
use super::dataset::{Dataset, Example};
use super::source::{files, ColumnMap, FileFormat, Header};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// One row in this many is held out (the `validation` split).
pub const HELD_OUT_EVERY: usize = 20;

/// The text task's only label: rows have no class.
pub const LABEL_NAMES: [&str; 1] = ["text"];

/// The documents of `path`; `columns` names the text (and optional response) columns of a
/// table (defaults `text` and `response`; `prompt` stands in for a missing `text` column).
pub fn read(path: &Path, columns: &ColumnMap) -> Result<Vec<Example>> {
    let is_txt = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    let examples = if is_txt {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        blocks(&text)
    } else {
        let frame = files::read_table(path, FileFormat::from_path(path)?, &Header::Present)?;
        let names: Vec<String> = frame.get_column_names().iter().map(|c| c.to_string()).collect();
        let has = |c: &str| names.iter().any(|n| n == c);
        let text =
            if !has(&columns.text1) && columns.text1 == "text" && has("prompt") { "prompt" } else { &columns.text1 };
        let response = columns.text2.as_deref().filter(|r| has(r));
        let map = match response {
            Some(response) => ColumnMap::pair(text, response, ""),
            None => ColumnMap::single(text, ""),
        };
        super::source::columns::inputs_from_frame(&frame, path, &map)?
    };
    if examples.is_empty() {
        return Err(Error::Data { path: path.into(), row: None, column: None, message: "no documents".into() });
    }
    Ok(examples)
}

/// The blank-line-separated blocks of `text` as documents, ids counting from 0.
pub fn blocks(text: &str) -> Vec<Example> {
    let mut documents = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if !current.is_empty() {
                documents.push(Example::new(documents.len() as i64, current.join("\n"), None, 0));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    documents
}

/// The rows of `split` (`train` or `validation`) of `all`, named `name/split`.
pub fn split(name: &str, all: &[Example], split: &str) -> Dataset {
    let held_out = split == "validation";
    let rows = all.iter().enumerate().filter(|(i, _)| ((i + 1) % HELD_OUT_EVERY == 0) == held_out);
    Dataset::new(format!("{name}/{split}"), &LABEL_NAMES, rows.map(|(_, e)| e.clone()).collect())
}

/// Row `position`'s token ids and where its loss starts: `</s>`, the document (or prompt), then
/// the response; and whether it was cut. Rows over `max_length` keep their first tokens. `None`
/// when nothing is left to predict (an empty document, or a prompt that fills the window).
pub fn encode(
    tokenizer: &Tokenizer,
    position: usize,
    example: &Example,
    max_length: usize,
) -> Result<Option<(EncodedExample, bool)>> {
    let mut ids = tokenizer.encode(&example.text1)?;
    // A document's loss reads every token after `</s>`; a response's only the response.
    let target_start = match &example.text2 {
        None => 1,
        Some(response) => {
            let start = ids.len();
            ids.extend(tokenizer.encode_plain(response)?);
            start
        }
    };
    let truncated = ids.len() > max_length;
    ids.truncate(max_length);
    Ok((ids.len() > target_start).then_some((EncodedExample { position, ids, label: 0, target_start }, truncated)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_separate_documents_and_every_twentieth_row_is_held_out() {
        let docs = blocks("first line\nsecond line\n\n\n  \nnext\r\n\nlast");
        let texts: Vec<&str> = docs.iter().map(|d| d.text1.as_str()).collect();
        assert_eq!(texts, ["first line\nsecond line", "next", "last"]);
        let many: Vec<Example> = (0..45).map(|i| Example::new(i, format!("d{i}"), None, 0)).collect();
        let held: Vec<i64> = split("t", &many, "validation").examples.iter().map(|e| e.id).collect();
        assert_eq!(held, [19, 39]);
        assert_eq!(split("t", &many, "train").len(), 43);
    }

    #[test]
    fn a_response_is_the_only_target_and_long_rows_keep_their_start() {
        let tokenizer = crate::model::tiny::tokenizer().unwrap();
        let prompt = Example::new(0, "The cat sat on the mat.", Some(" Yes".into()), 0);
        let (row, cut) = encode(&tokenizer, 7, &prompt, 64).unwrap().unwrap();
        let (ids, start) = (&row.ids, row.target_start);
        assert_eq!((row.position, cut), (7, false));
        assert_eq!(ids[..start], tokenizer.encode("The cat sat on the mat.").unwrap()[..]);
        assert_eq!(ids[start..], tokenizer.encode_plain(" Yes").unwrap()[..]);
        assert_eq!(encode(&tokenizer, 7, &prompt, start).unwrap(), None, "no room left for the response");
        // Exactly filling the window is not a cut.
        assert_eq!(encode(&tokenizer, 7, &prompt, ids.len()).unwrap().unwrap().1, false);
        let doc = Example::new(1, "The cat sat on the mat and the dog slept.", None, 0);
        let (row, cut) = encode(&tokenizer, 0, &doc, 4).unwrap().unwrap();
        assert_eq!((row.ids.len(), row.target_start, cut), (4, 1, true));
        assert_eq!(row.ids[..], tokenizer.encode(&doc.text1).unwrap()[..4]);
    }

    #[test]
    fn tables_hold_documents_or_prompt_response_pairs() {
        use polars::prelude::{Column, DataFrame, NamedFrom, ParquetWriter, Series};
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("sft.jsonl");
        std::fs::write(
            &jsonl,
            "{\"prompt\": \"Q: 2+2?\", \"response\": \" 4\"}\n{\"prompt\": \"Q: 1+1?\", \"response\": \" 2\"}\n",
        )
        .unwrap();
        let rows = read(&jsonl, &ColumnMap::parse("", &["text", "response"]).unwrap()).unwrap();
        assert_eq!((rows[1].text1.as_str(), rows[1].text2.as_deref()), ("Q: 1+1?", Some(" 2")));
        let parquet = dir.path().join("docs.parquet");
        let column = Column::from(Series::new("body".into(), ["first document", "second"]));
        let mut frame = DataFrame::new(2, vec![column]).unwrap();
        ParquetWriter::new(std::fs::File::create(&parquet).unwrap()).finish(&mut frame).unwrap();
        let rows = read(&parquet, &ColumnMap::parse("text=body", &["text", "response"]).unwrap()).unwrap();
        assert_eq!((rows[0].text1.as_str(), rows[0].text2.as_deref()), ("first document", None));
        // A missing column and an empty cell are named with the file.
        let err = read(&parquet, &ColumnMap::parse("", &["text", "response"]).unwrap()).unwrap_err().to_string();
        assert!(err.contains("docs.parquet") && err.contains("text") && err.contains("body"), "{err}");
        std::fs::write(&jsonl, "{\"text\": \"fine\"}\n{\"text\": \"\"}\n").unwrap();
        let err = read(&jsonl, &ColumnMap::parse("", &["text", "response"]).unwrap()).unwrap_err().to_string();
        assert!(err.contains("sft.jsonl") && err.contains("row 2"), "{err}");
    }
}
