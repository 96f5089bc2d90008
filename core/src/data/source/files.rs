//! Reading data files into tables: TSV and CSV (polars' reader, every column as text),
//! parquet (polars), and JSON Lines (serde_json, one object per line).
//!
//! Before polars parses a delimited file, a quote-aware scan checks that every record has as
//! many fields as the header, so a ragged row is reported by its row, line and field count
//! rather than as a parser message without a position (or, for short rows, silently as nulls).

use std::io::Cursor;
use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};

/// The formats ftlab reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Tab-separated values.
    Tsv,
    /// Comma-separated values.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet (what the Hugging Face hub serves).
    Parquet,
}

impl FileFormat {
    /// The format implied by the file's extension.
    pub fn from_path(path: &Path) -> Result<Self> {
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        match extension.as_str() {
            "tsv" | "tab" => Ok(Self::Tsv),
            "csv" => Ok(Self::Csv),
            "jsonl" | "ndjson" | "json" => Ok(Self::Jsonl),
            "parquet" => Ok(Self::Parquet),
            _ => Err(Error::Data {
                path: path.into(),
                row: None,
                column: None,
                message: "unknown file type: use a .tsv, .csv, .jsonl or .parquet file".into(),
            }),
        }
    }
}

/// Whether a delimited file starts with a header line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// The first line names the columns.
    Present,
    /// No header: the columns get these names, in order.
    Absent(Vec<String>),
}

/// Reads `path` as `format`. `header` applies to TSV and CSV only.
pub fn read_table(path: &Path, format: FileFormat, header: &Header) -> Result<DataFrame> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    parse_table(&bytes, path, format, header)
}

/// Parses the contents of a file; `path` names it in errors.
pub fn parse_table(bytes: &[u8], path: &Path, format: FileFormat, header: &Header) -> Result<DataFrame> {
    let data_error = |message: String| Error::Data { path: path.into(), row: None, column: None, message };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(data_error("the file is empty".into()));
    }
    if format != FileFormat::Parquet {
        if let Err(e) = std::str::from_utf8(bytes) {
            let before = &bytes[..e.valid_up_to()];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let byte = before.len() - before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
            return Err(data_error(format!("line {line}, byte {byte}: not UTF-8 text (save the file as UTF-8)")));
        }
    }
    match format {
        FileFormat::Tsv => parse_delimited(bytes, path, Dialect::GLUE_TSV, header),
        FileFormat::Csv => parse_delimited(bytes, path, Dialect::CSV, header),
        FileFormat::Jsonl => parse_jsonl(bytes, path),
        FileFormat::Parquet => {
            ParquetReader::new(Cursor::new(bytes)).finish().map_err(|e| data_error(format!("cannot read parquet: {e}")))
        }
    }
}

/// Rows of a parquet file, from its footer (nothing else is decoded).
pub fn parquet_rows(path: &Path) -> Result<usize> {
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    ParquetReader::new(file).num_rows().map_err(|e| Error::Data {
        path: path.into(),
        row: None,
        column: None,
        message: format!("cannot read the parquet footer: {e}"),
    })
}

/// How a delimited file separates and quotes fields.
#[derive(Debug, Clone, Copy)]
struct Dialect {
    separator: u8,
    /// The quote character, or none: every byte but the separator and newlines is text.
    quote: Option<u8>,
}

impl Dialect {
    /// GLUE's `.tsv` files (and llmft's reader: `quoting=csv.QUOTE_NONE`): tabs, no quoting, so
    /// a field may begin with `"` or hold an odd number of them, and those quotes are text.
    const GLUE_TSV: Dialect = Dialect { separator: b'\t', quote: None };
    /// RFC 4180: commas, fields optionally in double quotes, `""` for a quote inside one.
    const CSV: Dialect = Dialect { separator: b',', quote: Some(b'"') };
}

fn parse_delimited(bytes: &[u8], path: &Path, dialect: Dialect, header: &Header) -> Result<DataFrame> {
    let data_error = |message: String| Error::Data { path: path.into(), row: None, column: None, message };
    let has_header = *header == Header::Present;
    let expected = match header {
        Header::Absent(names) => Some(names.len()),
        Header::Present => None,
    };
    if let Some(ragged) = first_ragged_record(bytes, dialect, has_header, expected) {
        return Err(Error::Data {
            path: path.into(),
            row: Some(ragged.row),
            column: None,
            message: format!(
                "line {} has {} fields but the {} has {} (a ragged row)",
                ragged.line,
                ragged.fields,
                if has_header { "header" } else { "file's layout" },
                ragged.expected
            ),
        });
    }
    let parse = CsvParseOptions::default().with_separator(dialect.separator).with_quote_char(dialect.quote);
    let mut frame = CsvReadOptions::default()
        .with_has_header(has_header)
        .with_infer_schema_length(Some(0)) // every column as text: labels are mapped by name or id
        .with_parse_options(parse)
        .into_reader_with_file_handle(Cursor::new(bytes))
        .finish()
        .map_err(|e| data_error(e.to_string()))?;
    if let Header::Absent(names) = header {
        frame.set_column_names(names).map_err(|e| data_error(e.to_string()))?;
    }
    Ok(frame)
}

/// Where a delimited file's field count first differs from the header's.
#[derive(Debug, PartialEq, Eq)]
struct Ragged {
    row: usize,
    line: usize,
    fields: usize,
    expected: usize,
}

/// Scans records as polars splits them (a quote, if the dialect has one, opens only at the
/// start of a field; `""` inside quotes is a literal quote; blank lines are skipped).
fn first_ragged_record(text: &[u8], dialect: Dialect, has_header: bool, expected: Option<usize>) -> Option<Ragged> {
    let separator = dialect.separator;
    let (mut line, mut record_line, mut records) = (1, 1, 0usize);
    let (mut fields, mut at_field_start, mut in_quotes, mut empty) = (1, true, false, true);
    let mut expected = expected;
    let mut bytes = text.iter().copied().peekable();
    let mut finish = |fields: usize, record_line: usize, expected: &mut Option<usize>| -> Option<Ragged> {
        records += 1;
        let want = *expected.get_or_insert(fields);
        let row = if has_header { records - 1 } else { records };
        (fields != want).then_some(Ragged { row, line: record_line, fields, expected: want })
    };
    while let Some(byte) = bytes.next() {
        if in_quotes {
            match byte {
                b if Some(b) == dialect.quote && bytes.peek() == Some(&b) => {
                    bytes.next();
                }
                b if Some(b) == dialect.quote => in_quotes = false,
                b'\n' => line += 1,
                _ => {}
            }
            continue;
        }
        match byte {
            b if at_field_start && Some(b) == dialect.quote => {
                (in_quotes, at_field_start, empty) = (true, false, false)
            }
            b'\n' => {
                if !empty {
                    if let Some(ragged) = finish(fields, record_line, &mut expected) {
                        return Some(ragged);
                    }
                }
                line += 1;
                (record_line, fields, at_field_start, empty) = (line, 1, true, true);
            }
            b'\r' => {}
            b if b == separator => (fields, at_field_start, empty) = (fields + 1, true, false),
            _ => (at_field_start, empty) = (false, false),
        }
    }
    if empty {
        None
    } else {
        finish(fields, record_line, &mut expected)
    }
}

/// Parses JSON Lines: each non-blank line an object; values become text columns (numbers and
/// booleans formatted, nulls kept as nulls). Keys missing from a line are nulls.
fn parse_jsonl(bytes: &[u8], path: &Path) -> Result<DataFrame> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error::Data {
        path: path.into(),
        row: None,
        column: None,
        message: format!("not UTF-8 text: {e}"),
    })?;
    let mut names: Vec<String> = vec![];
    let mut rows: Vec<serde_json::Map<String, serde_json::Value>> = vec![];
    for (line, content) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |message: String| Error::Data { path: path.into(), row: Some(rows.len() + 1), column: None, message };
        let value: serde_json::Value =
            serde_json::from_str(content).map_err(|e| bad(format!("line {}: invalid JSON: {e}", line + 1)))?;
        let serde_json::Value::Object(object) = value else {
            return Err(bad(format!("line {} is not a JSON object", line + 1)));
        };
        for key in object.keys() {
            if !names.contains(key) {
                names.push(key.clone());
            }
        }
        rows.push(object);
    }
    let columns: Vec<Column> = names
        .iter()
        .map(|name| {
            let cells: Vec<Option<String>> = rows
                .iter()
                .map(|row| match row.get(name) {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                })
                .collect();
            Column::new(name.as_str().into(), cells)
        })
        .collect();
    DataFrame::new(rows.len(), columns).map_err(|e| Error::Data {
        path: path.into(),
        row: None,
        column: None,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_ragged_record() {
        let tsv = b"a\tb\tc\n1\t2\t3\n\n4\t5\n";
        assert_eq!(
            first_ragged_record(tsv, Dialect::GLUE_TSV, true, None),
            Some(Ragged { row: 2, line: 4, fields: 2, expected: 3 })
        );
        // A separator inside quotes is not a field boundary; a quote mid-field is literal.
        let csv = b"a,b\n\"x, y\",2\nit's \"fine\",3";
        assert_eq!(first_ragged_record(csv, Dialect::CSV, true, None), None);
        // In a GLUE TSV, quotes are text: a field that opens with one does not swallow the tab.
        let glue = b"a\tb\n\"x\t2\n\"y\"\"\t3\n";
        assert_eq!(first_ragged_record(glue, Dialect::GLUE_TSV, true, None), None);
        // Header-less: the expected count is given, rows count from the first line.
        assert_eq!(
            first_ragged_record(b"x\t1\ny", Dialect::GLUE_TSV, false, Some(2)),
            Some(Ragged { row: 2, line: 2, fields: 1, expected: 2 })
        );
    }
}
