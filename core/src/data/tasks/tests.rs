//! Task loader tests: the embedded llmft files (row and label counts of shared/data/README.md),
//! and hub tasks read from a temporary HF cache filled with parquet files shaped like the hub's.

use std::path::Path;

use polars::prelude::*;

use crate::data::prompt::PromptFamily;
use crate::data::source::{ColumnMap, Header, LocalSource};
use crate::data::task::{self, DataOptions, HansScope};
use crate::hub::Hub;

/// A temporary HF cache; `add` writes a dataset file under `refs/<revision>`'s snapshot.
struct FakeCache(tempfile::TempDir);

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

impl FakeCache {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn add(&self, repo: &str, revision: &str, path: &str, mut frame: DataFrame) {
        let repo_dir = self.0.path().join(format!("datasets--{}", repo.replace('/', "--")));
        let file = repo_dir.join("snapshots").join(COMMIT).join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        ParquetWriter::new(std::fs::File::create(&file).unwrap()).finish(&mut frame).unwrap();
        let reference = repo_dir.join("refs").join(revision);
        std::fs::create_dir_all(reference.parent().unwrap()).unwrap();
        std::fs::write(reference, COMMIT).unwrap();
    }

    fn options(&self) -> DataOptions {
        DataOptions { hub: Hub { cache: self.0.path().into(), offline: true }, ..DataOptions::from_env() }
    }
}

/// A GLUE-shaped pair table: labels as given, `idx` = row number, texts naming the row.
fn pair_frame(first: &str, second: &str, labels: &[i64]) -> DataFrame {
    let n = labels.len();
    let texts = |prefix: &str| (0..n).map(|i| format!("{prefix} {i}")).collect::<Vec<_>>();
    DataFrame::new(
        n,
        vec![
            Column::new(first.into(), texts("first")),
            Column::new(second.into(), texts("second")),
            Column::new("label".into(), labels.to_vec()),
            Column::new("idx".into(), (0..n as i32).collect::<Vec<_>>()),
        ],
    )
    .unwrap()
}

#[test]
fn paws_qqp_has_the_readme_counts_and_no_byte_literals() {
    let data = task::find("paws-qqp").unwrap().load_split("dev_and_test", &DataOptions::from_env()).unwrap();
    assert_eq!((data.len(), data.label_counts()), (677, vec![486, 191]));
    let first = &data.examples[0];
    assert_eq!(first.id, 1);
    assert!(first.text1.starts_with("What were the major effects of the cambodia earthquake"), "{}", first.text1);
    assert!(first.text1.ends_with("in 1877 ?"), "{}", first.text1);
    // The b"..." form (sentences with an apostrophe) is stripped too.
    assert!(data.examples[1].text1.starts_with("The guy I 'm dating"), "{}", data.examples[1].text1);
    assert!(data.examples.iter().all(|e| !e.text1.starts_with("b'") && !e.text1.starts_with("b\"")));
    assert_eq!(super::paws_qqp::strip_byte_literal("b'it'"), Some("it"));
    assert_eq!(super::paws_qqp::strip_byte_literal("b\"it's\""), Some("it's"));
    assert_eq!(super::paws_qqp::strip_byte_literal("plain"), None);
}

#[test]
fn cola_ood_has_the_readme_counts_and_its_last_line() {
    let data = task::find("cola-ood").unwrap().load_split("dev", &DataOptions::from_env()).unwrap();
    assert_eq!((data.len(), data.label_counts()), (516, vec![162, 354]));
    assert_eq!(data.examples[0].text1, "Somebody just left - guess who.");
    assert!(data.examples[515].text1.ends_with("himself."), "{}", data.examples[515].text1);
    assert!(data.examples.iter().all(|e| e.text2.is_none()));
}

#[test]
fn mnli_is_binarized_and_keeps_glue_idx() {
    let cache = FakeCache::new();
    // 0 entailment, 1 neutral, 2 contradiction: 4 + 3 + 2 rows.
    let labels = [0, 1, 2, 0, 1, 2, 0, 1, 0];
    cache.add(
        "nyu-mll/glue",
        "main",
        "mnli/train-00000-of-00001.parquet",
        pair_frame("premise", "hypothesis", &labels),
    );
    let mnli = task::find("mnli").unwrap();
    let data = mnli.load_split("train", &cache.options()).unwrap();
    assert_eq!((data.len(), data.label_counts()), (6, vec![4, 2]));
    assert_eq!(data.examples.iter().map(|e| e.id).collect::<Vec<_>>(), [0, 2, 3, 5, 6, 8]);
    assert_eq!((data.examples[1].text1.as_str(), data.examples[1].label), ("first 2", 1));
    let original = task::find("mnli-original").unwrap().load_split("train", &cache.options()).unwrap();
    assert_eq!(original.label_counts(), [4, 3, 2]);
    assert_eq!(mnli.train_pool(&cache.options()).unwrap(), data);
}

#[test]
fn a_missing_hub_file_says_what_to_fetch_and_where() {
    let cache = FakeCache::new();
    let err = task::find("mnli").unwrap().eval_set(&cache.options(), true).unwrap_err().to_string();
    assert!(err.contains("nyu-mll/glue") && err.contains("mnli/validation_matched-00000-of-00001.parquet"), "{err}");
    assert!(err.contains(&cache.0.path().display().to_string()), "{err}");
    let err = task::find("hans").unwrap().eval_set(&cache.options(), false).unwrap_err().to_string();
    assert!(err.contains("jhu-cogsci/hans") && err.contains("refs/convert/parquet"), "{err}");
}

#[test]
fn qqp_subsamples_each_split_like_llmft() {
    let cache = FakeCache::new();
    let alternating = |n: usize| (0..n as i64).map(|i| i % 2).collect::<Vec<_>>();
    cache.add(
        "nyu-mll/glue",
        "main",
        "qqp/train-00000-of-00001.parquet",
        pair_frame("question1", "question2", &alternating(1500)),
    );
    cache.add(
        "nyu-mll/glue",
        "main",
        "qqp/validation-00000-of-00001.parquet",
        pair_frame("question1", "question2", &alternating(1200)),
    );
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sampling/numpy.json")).unwrap(),
    )
    .unwrap();
    let draws = fixture["legacy_sequence_small"]["draws"].as_array().unwrap();
    let qqp = task::find("qqp").unwrap();
    for (split, draw) in ["train", "validation"].into_iter().zip(draws) {
        let data = qqp.load_split(split, &cache.options()).unwrap();
        let expected: Vec<i64> = draw["indices"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(data.examples.iter().map(|e| e.id).collect::<Vec<_>>(), expected, "{split}");
        // The record names the commit the `main` revision resolved to.
        let read = &data.hub_files;
        assert_eq!(read.len(), 1, "{read:?}");
        assert_eq!(
            (read[0].repo.as_str(), read[0].revision.as_str(), read[0].commit.as_str()),
            ("nyu-mll/glue", "main", COMMIT)
        );
        assert_eq!(read[0].path, format!("qqp/{split}-00000-of-00001.parquet"));
    }
}

/// GLUE's QQP dev file through `--file` keeps llmft's 1,000 validation rows: the draw after one
/// over GLUE's 363,846 training rows (numpy's, in the fixture), whatever the file's format.
#[test]
fn a_qqp_file_is_subsampled_as_llmft_subsamples_validation() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sampling/numpy.json")).unwrap(),
    )
    .unwrap();
    let draw = &fixture["legacy_sequence"]["draws"][1];
    assert_eq!((draw["n"].as_u64(), fixture["legacy_sequence"]["draws"][0]["n"].as_u64()), (Some(40430), Some(363846)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.tsv");
    let mut text = String::from("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n");
    for i in 0..40430 {
        text += &format!("{i}\t{}\t{}\tQ{i}a?\tQ{i}b?\t{}\n", 2 * i, 2 * i + 1, i % 2);
    }
    std::fs::write(&path, text).unwrap();
    let columns = ColumnMap::pair("question1", "question2", "is_duplicate").with_id("id");
    let local = LocalSource { path, columns, header: Header::Present };
    let options = DataOptions { local: Some(local), ..DataOptions::from_env() };
    let data = task::find("qqp").unwrap().load_split("validation", &options).unwrap();
    let expected: Vec<i64> = draw["indices"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(data.examples.iter().map(|e| e.id).collect::<Vec<_>>(), expected);
}

#[test]
fn hans_defaults_to_lexical_overlap_scored_per_label() {
    let cache = FakeCache::new();
    let heuristics = ["lexical_overlap", "subsequence", "constituent"];
    let n = 12;
    let frame = DataFrame::new(
        n,
        vec![
            Column::new("premise".into(), (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>()),
            Column::new("hypothesis".into(), (0..n).map(|i| format!("h{i}")).collect::<Vec<_>>()),
            Column::new("label".into(), (0..n as i64).map(|i| i % 2).collect::<Vec<_>>()),
            Column::new("heuristic".into(), (0..n).map(|i| heuristics[i % 3]).collect::<Vec<_>>()),
            Column::new("subcase".into(), (0..n).map(|i| format!("case_{}", i % 6)).collect::<Vec<_>>()),
        ],
    )
    .unwrap();
    cache.add("jhu-cogsci/hans", "refs/convert/parquet", "plain_text/validation/0000.parquet", frame);
    let hans = task::find("hans").unwrap();
    let set = hans.eval_set(&cache.options(), false).unwrap();
    assert_eq!(set.data.examples.iter().map(|e| e.id).collect::<Vec<_>>(), [0, 3, 6, 9], "ids count the full split");
    let names: Vec<&str> = set.subsets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["hans-lexical_overlap-entailment", "hans-lexical_overlap-non-entailment"]);
    assert_eq!(set.subsets[1].positions, [1, 3]);
    let all = hans.eval_set(&DataOptions { hans: HansScope::All, ..cache.options() }, false).unwrap();
    assert_eq!(all.data.len(), 12);
    assert!(all.subsets.iter().any(|s| s.name == "hans-subsequence" && s.positions.len() == 4));
    assert!(all.subsets.iter().any(|s| s.name == "hans-constituent-entailment" && s.positions.len() == 2));
    assert!(all.subsets.iter().any(|s| s.name == "hans-case_5" && s.positions == [5, 11]));
}

#[test]
fn reads_the_hub_s_snappy_parquet() {
    let cache = FakeCache::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/glue-rte-validation.parquet");
    let target = cache.0.path().join(format!("datasets--nyu-mll--glue/snapshots/{COMMIT}/rte"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::copy(fixture, target.join("validation-00000-of-00001.parquet")).unwrap();
    std::fs::create_dir_all(cache.0.path().join("datasets--nyu-mll--glue/refs")).unwrap();
    std::fs::write(cache.0.path().join("datasets--nyu-mll--glue/refs/main"), COMMIT).unwrap();
    let set = task::find("rte").unwrap().eval_set(&cache.options(), true).unwrap();
    assert_eq!((set.data.len(), set.data.label_counts()), (5, vec![3, 2]));
    assert_eq!(set.data.examples[1].text2.as_deref(), Some("Pope John Paul II died."));
}

#[test]
fn every_task_is_registered_with_consistent_splits() {
    let names: Vec<&str> = task::all().iter().map(|t| t.name).collect();
    for expected in [
        "cola",
        "cola-ood",
        "hans",
        "mnli",
        "mnli-mm",
        "mnli-original",
        "paws-qqp",
        "qqp",
        "rte",
        "synthetic-hans",
        "synthetic-nli",
        "text",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    for task in task::all() {
        assert!(task.splits.contains(&task.eval_split), "{}", task.name);
        assert!(task.train_split.is_none_or(|s| task.splits.contains(&s)), "{}", task.name);
        for ood in task.ood {
            assert!(task::find(ood).unwrap().train_split.is_none(), "{ood} is eval-only");
        }
        // One label word per label; documents (the text family) have none.
        let words = task.prompt.pattern(Default::default()).words.len();
        let expected = if task.prompt == PromptFamily::Text { 0 } else { task.label_names.len() };
        assert_eq!(words, expected, "{}", task.name);
    }
    assert!(task::find("nope").unwrap_err().to_string().contains("synthetic-nli"));
}
