//! Users' files: every format loads through a column mapping, and bad files — a missing
//! column, an unknown label, an empty file or value, a ragged row — are errors that name the
//! file, the row and the column.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::*;

const LABELS: [&str; 2] = ["entailment", "contradiction"];

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn load(path: &Path, columns: &str) -> crate::error::Result<Dataset> {
    let columns = ColumnMap::parse(columns, &["premise", "hypothesis"]).unwrap();
    LocalSource { path: path.into(), columns, header: Header::Present }.load("user", &LABELS)
}

fn error(path: &Path, columns: &str) -> String {
    load(path, columns).unwrap_err().to_string()
}

#[test]
fn every_format_loads_through_a_column_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = "premise=s1,hypothesis=s2,label=gold";
    let tsv = write(dir.path(), "d.tsv", "s1\ts2\tgold\nA cat.\tAn animal.\tentailment\nA dog.\tNo dog.\t1\n");
    let csv = write(
        dir.path(),
        "d.csv",
        "s1,s2,gold\n\"A cat, asleep.\",An animal.,entailment\nA dog.,No dog.,contradiction",
    );
    let jsonl = write(dir.path(), "d.jsonl", "{\"s1\": \"A cat, asleep.\", \"s2\": \"An animal.\", \"gold\": 0}\n\n{\"s1\": \"A dog.\", \"s2\": \"No dog.\", \"gold\": \"contradiction\"}\n");
    for path in [&tsv, &csv, &jsonl] {
        let data = load(path, mapping).unwrap();
        assert_eq!(data.examples.iter().map(|e| e.label).collect::<Vec<_>>(), [0, 1], "{}", path.display());
        assert_eq!(data.examples[1].text2.as_deref(), Some("No dog."));
    }
    assert_eq!(load(&csv, mapping).unwrap().examples[0].text1, "A cat, asleep.");
    let parquet = dir.path().join("d.parquet");
    let mut frame = DataFrame::new(
        2,
        vec![
            Column::new("premise".into(), ["p0", "p1"]),
            Column::new("hypothesis".into(), ["h0", "h1"]),
            Column::new("label".into(), [1i64, 0]),
            Column::new("pair".into(), [7i64, 9]),
        ],
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(&parquet).unwrap()).finish(&mut frame).unwrap();
    let data = load(&parquet, "id=pair").unwrap();
    assert_eq!((data.examples[0].id, data.examples[0].label, data.examples[1].text1.as_str()), (7, 1, "p1"));
}

#[test]
fn a_missing_column_names_the_file_and_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d.tsv", "premise\thypo\tlabel\na\tb\t0\n");
    let err = error(&path, "");
    assert!(err.contains(&path.display().to_string()) && err.contains("column `hypothesis`"), "{err}");
    assert!(err.contains("`hypo`"), "lists the columns there are: {err}");
}

#[test]
fn rows_with_unknown_labels_are_left_out_and_counted_unless_none_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d.tsv", "premise\thypothesis\tlabel\na\tb\t0\nc\td\tneutral\ne\tf\tneutral\n");
    let data = load(&path, "").unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data.unknown_labels, [("neutral".to_string(), 2)].into_iter().collect());
    let path = write(dir.path(), "e.tsv", "premise\thypothesis\tlabel\nc\td\tneutral\n");
    let err = error(&path, "");
    assert!(err.contains("e.tsv: row 1, column `label`: unknown label `neutral`"), "{err}");
    assert!(err.contains("`contradiction`"), "lists the labels: {err}");
}

#[test]
fn empty_files_and_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.tsv", "");
    assert!(error(&empty, "").contains("empty.tsv: the file is empty"), "{}", error(&empty, ""));
    let header_only = write(dir.path(), "header.tsv", "premise\thypothesis\tlabel\n");
    assert!(error(&header_only, "").contains("header.tsv: the file has no rows"), "{}", error(&header_only, ""));
    let blank = write(dir.path(), "blank.csv", "premise,hypothesis,label\na,,0\n");
    let err = error(&blank, "");
    assert!(err.contains("blank.csv: row 1, column `hypothesis`: empty value"), "{err}");
    let jsonl = write(dir.path(), "d.jsonl", "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": 0}\n[1]\n");
    assert!(error(&jsonl, "").contains("d.jsonl: row 2: line 2 is not a JSON object"), "{}", error(&jsonl, ""));
}

#[test]
fn a_ragged_tsv_names_the_row_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let long = write(dir.path(), "long.tsv", "premise\thypothesis\tlabel\na\tb\t0\nc\td\t1\textra\n");
    let err = error(&long, "");
    assert!(err.contains("long.tsv: row 2: line 3 has 4 fields but the header has 3"), "{err}");
    let short = write(dir.path(), "short.tsv", "premise\thypothesis\tlabel\na\tb\n");
    let err = error(&short, "");
    assert!(err.contains("short.tsv: row 1: line 2 has 2 fields but the header has 3"), "{err}");
}

#[test]
fn unknown_extensions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d.xlsx", "x");
    assert!(error(&path, "").contains("unknown file type"), "{}", error(&path, ""));
}
