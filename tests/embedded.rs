//! The embedded default model learns in context, so the main job shows the science: before
//! training it is at the majority baseline, the 8-shot ICL teacher is well above it, and the
//! distilled student lands in between (shared/DESIGN.md §5). Thresholds are margins on accuracy
//! over 500 balanced in-domain examples, far from anything CPU rounding decides
//! (`scripts/test-numerics` prints them).

mod common;

use std::process::Command;

/// `ftlab run ARGS --json` into a fresh folder; the record.
fn run(args: &[&str]) -> serde_json::Value {
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["run"])
        .args(args)
        .args(["--out", out.path().to_str().unwrap(), "--json"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(result.status.success(), "ftlab run {args:?}: {}", String::from_utf8_lossy(&result.stderr));
    let record: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(record["status"], "completed", "{record}");
    record
}

/// In-domain accuracy of a headline (`zero_shot`, `icl_reference`, `last`) and the majority
/// baseline of its in-domain set.
fn in_domain(record: &serde_json::Value, headline: &str) -> (f64, f64) {
    let head = &record[headline];
    let set = head["report"].as_array().unwrap().iter().find(|s| s["in_domain"] == true).unwrap();
    (head["acc_in"].as_f64().unwrap(), set["scores"]["majority"]["accuracy"].as_f64().unwrap())
}

/// The README's main job, with its defaults.
#[test]
fn the_main_job_shows_zero_shot_below_the_distilled_student_below_icl() {
    let record = run(&["--plugin", "context_distill"]);
    let (zero_shot, majority) = in_domain(&record, "zero_shot");
    let (icl, _) = in_domain(&record, "icl_reference");
    let (student, _) = in_domain(&record, "last");
    common::numerics("embedded.zero_shot_minus_majority", (zero_shot - majority).abs(), "<=0.05");
    common::numerics("embedded.icl_minus_majority", icl - majority, ">=0.25");
    common::numerics("embedded.student_minus_zero_shot", student - zero_shot, ">=0.15");
    assert!((zero_shot - majority).abs() <= 0.05, "before training {zero_shot:.3}, majority {majority:.3}");
    assert!(icl >= majority + 0.25, "8-shot ICL {icl:.3}, majority {majority:.3}");
    assert!(student >= zero_shot + 0.15, "distilled student {student:.3}, before training {zero_shot:.3}");
}
