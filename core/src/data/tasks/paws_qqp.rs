//! PAWS-QQP (Zhang et al., 2019, <https://arxiv.org/abs/1904.01130>), the out-of-domain set
//! for QQP, in the form llmft ships it and shared/data holds: a TSV `id, sentence1, sentence2,
//! label` (677 rows; 486 × 0, 191 × 1; 1 = paraphrase) whose sentences are written as Python
//! byte literals. The `b'…'` / `b"…"` wrapper is stripped (llmft's `[2:-1]`); escapes inside,
//! such as `\xcf\x80`, stay as written, as in llmft. Embedded in the binary.

use std::path::Path;

use crate::data::dataset::Dataset;
use crate::data::prompt::PromptFamily;
use crate::data::source::{self, columns, ColumnMap, FileFormat, Header, LabelMap};
use crate::data::task::{per_label_subsets, DataOptions, FileRows, Metric, TaskDef};
use crate::error::{Error, Result};

/// The embedded file.
const DEV_AND_TEST_TSV: &[u8] = include_bytes!("../../../assets/data/paws_qqp/dev_and_test.tsv");
/// Its name in messages.
const NAME: &str = "<embedded>/paws_qqp/dev_and_test.tsv";
/// QQP's label names (label 1 = paraphrase = duplicate).
const LABELS: [&str; 2] = ["not_duplicate", "duplicate"];

/// `b'text'` or `b"text"` → `text`; `None` if `cell` is not wrapped so.
pub fn strip_byte_literal(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('b')?;
    ['\'', '"'].into_iter().find_map(|quote| inner.strip_prefix(quote)?.strip_suffix(quote))
}

fn load(_split: &str, _options: &DataOptions) -> Result<Dataset> {
    let path = Path::new(NAME);
    let frame = source::embedded_table(path, DEV_AND_TEST_TSV, FileFormat::Tsv, &Header::Present)?;
    let map = ColumnMap::pair("sentence1", "sentence2", "label").with_id("id");
    let mut examples = columns::examples_from_frame(&frame, path, &map, &LabelMap::new(&LABELS))?;
    for (row, example) in examples.iter_mut().enumerate() {
        let unwrap = |text: &str, column: &str| {
            strip_byte_literal(text).map(str::to_string).ok_or_else(|| Error::Data {
                path: path.into(),
                row: Some(row + 1),
                column: Some(column.into()),
                message: "expected a Python byte literal, b'…' or b\"…\"".into(),
            })
        };
        example.text1 = unwrap(&example.text1, "sentence1")?;
        example.text2 = Some(unwrap(example.text2.as_deref().unwrap_or_default(), "sentence2")?);
    }
    Ok(Dataset::new("paws-qqp/dev_and_test", &LABELS, examples))
}

inventory::submit! {
    TaskDef {
        name: "paws-qqp",
        about: "PAWS-QQP dev and test (677 rows; eval only, out of domain for QQP)",
        source: "embedded copy of llmft's data/paws_qqp/dev_and_test.tsv",
        label_names: &LABELS,
        splits: &["dev_and_test"],
        train_split: None,
        eval_split: "dev_and_test",
        ood: &[],
        metrics: &[Metric::MacroF1],
        prompt: PromptFamily::Paraphrase,
        load,
        subsets: per_label_subsets,
        file: FileRows::AS_READ,
    }
}
