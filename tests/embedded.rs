//! The embedded default model learns in context, so the main job shows the science: before
//! training it is at the majority baseline, the 8-shot ICL teacher is well above it, and the
//! distilled student, which sees no context, learns from its teacher's (shared/DESIGN.md §5; the
//! teacher draws a fresh context per input, so the student may pass the main job's one context,
//! and on this model it does); pattern-based and vanilla
//! fine-tuning, each in full and with BitFit and LoRA, learn the task from 16 and from 64
//! examples (the model knows the task's feature). Thresholds are margins on accuracy
//! over 500 balanced in-domain examples, far from anything CPU rounding decides
//! (`scripts/test-numerics` prints them).

mod common;

use std::process::Command;
use std::sync::Mutex;

/// `ftlab run ARGS --json` into a fresh folder; the record.
fn run(args: &[&str]) -> serde_json::Value {
    let out = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ftlab"));
    // Tests run two at a time on two cores: one libtorch thread per run, or their thread pools
    // spin against each other and a run of seconds takes minutes. A caller that sets more
    // (scripts/test-numerics) gets its count, one run at a time.
    static ONE_MULTITHREADED_RUN: Mutex<()> = Mutex::new(());
    let threads = std::env::var("OMP_NUM_THREADS").ok();
    if threads.is_none() {
        command.env("OMP_NUM_THREADS", "1");
    }
    let _turn = (threads.is_some_and(|t| t != "1"))
        .then(|| ONE_MULTITHREADED_RUN.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    let result = command
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
fn the_main_job_shows_icl_and_the_distilled_student_above_zero_shot() {
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

/// Mean in-domain accuracy over data seeds 0–2 of `objective` (with `adapter`) at 16 and 64
/// shots is at least majority + 0.2 (one draw of 16 examples can be unlucky; the mean is the
/// claim). 40 epochs at 1e-4 for the whole model or 1e-3 for an adapter's few weights; vanilla
/// FT's new head at 3e-2 (`train.lr_groups`): at the body's rate it barely moves in 16
/// examples' steps.
fn fine_tuning_learns(objective: &str, adapter: Option<&str>) {
    let name = format!("{objective}{}", adapter.map(|a| format!("+{a}")).unwrap_or_default());
    let lr = if adapter.is_some() { "train.lr=1e-3" } else { "train.lr=1e-4" };
    let mut settings = vec![lr, "train.epochs=40"];
    if objective == "vanilla_ft" {
        settings.push(r#"train.lr_groups={"vanilla_ft." = 3e-2}"#);
    }
    for shots in ["16", "64"] {
        let (mut sum, mut majority) = (0.0, 0.0);
        for data_seed in ["0", "1", "2"] {
            let mut args = vec!["--plugin", objective, "--shots", shots, "--data-seed", data_seed];
            args.extend(adapter.iter().flat_map(|a| ["--adapter", a]));
            args.extend(settings.iter().flat_map(|s| ["--set", s]));
            let (acc, maj) = in_domain(&run(&args), "last");
            sum += acc;
            majority = maj;
        }
        let mean = sum / 3.0;
        common::numerics(&format!("embedded.{name}_at_{shots}_minus_majority"), mean - majority, ">=0.2");
        assert!(mean >= majority + 0.2, "{name} at {shots} shots: mean {mean:.3} over 3 seeds, majority {majority:.3}");
    }
}

#[test]
fn pbft_learns_from_16_and_64_examples() {
    fine_tuning_learns("pbft", None);
}

#[test]
fn pbft_with_bitfit_learns_from_16_and_64_examples() {
    fine_tuning_learns("pbft", Some("bitfit"));
}

#[test]
fn pbft_with_lora_learns_from_16_and_64_examples() {
    fine_tuning_learns("pbft", Some("lora"));
}

#[test]
fn vanilla_ft_learns_from_16_and_64_examples() {
    fine_tuning_learns("vanilla_ft", None);
}

#[test]
fn vanilla_ft_with_bitfit_learns_from_16_and_64_examples() {
    fine_tuning_learns("vanilla_ft", Some("bitfit"));
}

#[test]
fn vanilla_ft_with_lora_learns_from_16_and_64_examples() {
    fine_tuning_learns("vanilla_ft", Some("lora"));
}

/// Context-aware prompt tuning on the embedded model: before training it is ICL over its
/// context of 8 of the 16 examples (the offsets start at zero), already far above the majority;
/// training the offsets keeps it there (0.974 → 0.972 measured at 1 thread, data seed 0).
#[test]
fn cpt_learns_in_context_from_16_examples() {
    let record = run(&["--plugin", "cpt", "--shots", "16"]);
    let (before, majority) = in_domain(&record, "zero_shot");
    let (after, _) = in_domain(&record, "last");
    common::numerics("embedded.cpt.before_minus_majority", before - majority, ">=0.25");
    common::numerics("embedded.cpt.after_minus_majority", after - majority, ">=0.3");
    assert!(
        before >= majority + 0.25,
        "cpt before training (ICL over its context) {before:.3}, majority {majority:.3}"
    );
    assert!(after >= majority + 0.3, "cpt after training {after:.3}, majority {majority:.3}");
}
