//! A run's phases, in order: load (model, data, methods and the in-context reference), prepare
//! (the methods' precomputation), train (epochs, each evaluated, logged and checkpointed), export
//! (adapters as files).

use std::path::Path;
use std::time::Instant;

use ftlab_registry::Registry;
use ftlab_sdk::{Inputs, Role};

use super::data::RunData;
use super::optim::AdamW;
use super::record::{sha256_of, RunDir};
use super::train::{self, EpochEnd, EpochMetrics, PartialEpoch, Progress};
use super::{ExportedFolder, Headline, MethodProvenance, RunConfig, RunOptions, RunRecord, Timings};
use crate::data::dataset::EvalSet;
use crate::device::Platform;
use crate::error::{Error, Result};
use crate::eval::harness::{self, EvalOptions, EvalReport};
use crate::eval::{predictions, PhaseMeter};
use crate::methods::MethodRun;
use crate::model::{LoadOptions, Model};

/// The run itself; `Ok(false)` when it stopped early for `epochs_budget`.
pub(super) fn execute(
    config: &RunConfig,
    options: &RunOptions,
    registry: &Registry,
    dir: &RunDir,
    record: &mut RunRecord,
) -> Result<bool> {
    let start = Instant::now();
    let devices = config.device.resolve()?;
    let device = devices[0];
    let mut model = Model::load(&config.model, LoadOptions { device, dtype: config.dtype, weights_format: None })?;
    if devices.len() > 1 {
        if !config.adapters.is_empty() {
            return Err(Error::Device(
                "adapters run on one device: a model spread over several (`device = \"cuda:0,cuda:1\"`) trains or prompts without adapters".into(),
            ));
        }
        let plan = model.spread(&devices)?;
        tracing::info!(layers = ?plan.layers, "decoder layers spread over {}", config.device);
    }
    if let Some(spec) = &config.tokenizer {
        model.set_tokenizer(crate::model::load_tokenizer(spec)?)?;
    }
    record.model = Some(model.origin.clone());
    let damaged = model.non_finite_parameters();
    if !damaged.is_empty() {
        if options.strict {
            return Err(Error::NonFiniteWeights { model: config.model.clone(), parameters: damaged.join(", ") });
        }
        let warning = format!("weights with NaN or infinite values: {}", damaged.join(", "));
        tracing::warn!("{warning}");
        record.warnings.push(warning);
    }
    record.platform = Some(Platform::of(&devices)?);
    let data = RunData::load(config, &model.tokenizer)?;
    record.data = Some(data.summary.clone());
    // A resumed run continues from its checkpoint, or starts over if it was killed before one.
    let checkpoint = options.resume && dir.checkpoint().join("progress.json").is_file();
    let session = Session { config, dir, model: &model, data: &data, start };
    let mut run = session.load_methods(registry, checkpoint, record)?;
    record.timings.load = start.elapsed().as_secs_f64();

    let t = Instant::now();
    config.train.autocast.run(device, || run.prepare(data.prepare_data(&model.tokenizer, device)))?;
    record.timings.prepare = t.elapsed().as_secs_f64();

    if !session.train(&mut run, checkpoint, options.epochs_budget, record)? {
        return Ok(false);
    }
    for folder in run.export_adapters(&dir.path)? {
        record.exported_adapters.push(ExportedFolder::of(&dir.path, &folder)?);
    }
    if config.train.save_model {
        let folder = dir.path.join("model");
        model.save_pretrained(&folder)?;
        record.saved_model = Some(ExportedFolder::of(&dir.path, &folder)?);
    }
    record.timings.total += start.elapsed().as_secs_f64();
    Ok(true)
}

/// What every phase after loading reads.
struct Session<'a> {
    config: &'a RunConfig,
    dir: &'a RunDir,
    model: &'a Model,
    data: &'a RunData,
    /// When this segment of the run started.
    start: Instant,
}

impl<'a> Session<'a> {
    /// The objective and adapters, the in-context reference scored first when asked (by default
    /// for objectives that distil a context into the model; a checkpoint holds it already), and
    /// their provenance.
    fn load_methods(&self, registry: &Registry, checkpoint: bool, record: &mut RunRecord) -> Result<MethodRun<'a>> {
        let (config, model, data) = (self.config, self.model, self.data);
        let mut run = MethodRun::new(model, registry, &config.method, &config.adapters, data.task_info(), config.seed)?;
        run.state.checkpoint = config.train.gradient_checkpointing;
        let distils = run.objective.inputs == Inputs::Unlabelled;
        if config.eval.icl_reference.unwrap_or(distils) && !checkpoint {
            record.icl_reference = Some(self.icl_reference(registry)?);
            // The reference froze the base model for itself; restore this run's choice.
            run.apply_trainability()?;
        }
        record.methods = provenance(config, registry)?;
        Ok(run)
    }

    /// In-context learning on the untrained model: `eval.icl_method` with `eval.icl_shots`
    /// demonstrations as the prepare data's `context`.
    fn icl_reference(&self, registry: &Registry) -> Result<Headline> {
        let (config, model, data) = (self.config, self.model, self.data);
        let mut icl = MethodRun::new(model, registry, &config.eval.icl_method, &[], data.task_info(), config.seed)?;
        let mut prepare = data.prepare_data(&model.tokenizer, model.device());
        prepare.json["context"] = data.context_of(config.eval.icl_shots, config.data_seed)?.into();
        config.train.autocast.run(model.device(), || icl.prepare(prepare))?;
        Ok(evaluate(&mut icl, data, model, config, 0, Some(&self.dir.predictions().join("icl_reference")))?.0)
    }

    /// Training from the checkpoint (with what the run measured and spent before it) or from a
    /// zero-shot evaluation as epoch 0, then the epochs; `Ok(false)` when the epoch budget ran
    /// out first.
    fn train(
        &self,
        run: &mut MethodRun,
        checkpoint: bool,
        budget: Option<usize>,
        record: &mut RunRecord,
    ) -> Result<bool> {
        let mut progress = if checkpoint { train::read_progress(self.dir)? } else { Progress::default() };
        // What trains may change per epoch: the checkpoint's state is that of the epoch it holds.
        run.epoch_begins(progress.state_epoch())?;
        let mut optimizer = AdamW::new(run.trainable(), &self.config.train)?;
        if checkpoint {
            train::load_checkpoint(self.dir, &mut optimizer, run, &progress)?;
        }
        record.trainable_parameters = optimizer.num_parameters();
        let (epochs, total) = self.plan(run, record.trainable_parameters > 0);
        record.timings.add(&progress.timings);
        record.train_resources = progress.train_resources;
        record.zero_shot = progress.zero_shot;
        record.icl_reference = record.icl_reference.take().or(progress.icl_reference);
        let logged = self.dir.metrics_until(progress.epochs_done)?;
        let mut best = best_of(&logged, self.dir)?;
        match logged.iter().find(|line| line["epoch"] == 0) {
            Some(line) if record.zero_shot.is_none() => record.zero_shot = headline_of(line, self.dir)?,
            Some(_) => {}
            None if progress.epochs_done == 0 => best = Some((0, self.zero_shot(run, record)?)),
            None => {}
        }
        record.last = best.as_ref().filter(|_| progress.epochs_done == 0).map(|(_, h)| h.clone());
        let mut ran = 0;
        for epoch in progress.epochs_done..epochs {
            if budget.is_some_and(|budget| ran >= budget) {
                return Ok(false);
            }
            if run.epoch_begins(epoch)? {
                optimizer.retarget(run.trainable(), &self.config.train);
            }
            // A run stopped mid-epoch continues that epoch where it stopped.
            let from = progress.partial.take().filter(|_| epoch == progress.epochs_done);
            self.epoch(run, &mut optimizer, (epoch, epochs, total), from, record, &mut best)?;
            ran += 1;
        }
        if record.last.is_none() {
            record.last = Some(self.evaluate(run, optimizer.step, epochs, record)?);
        }
        let kept = [epochs, best.as_ref().map_or(epochs, |(epoch, _)| *epoch)];
        self.keep_predictions(&kept)?;
        record.best = best;
        Ok(true)
    }

    /// Removes the per-example predictions of every epoch but `kept` (the last and the best).
    fn keep_predictions(&self, kept: &[usize]) -> Result<()> {
        let folder = self.dir.predictions();
        for epoch in predictions::epochs(&folder).unwrap_or_default().into_iter().filter(|e| !kept.contains(e)) {
            let stale = predictions::epoch_folder(&folder, epoch);
            std::fs::remove_dir_all(&stale).map_err(Error::io(stale))?;
        }
        Ok(())
    }

    /// Epochs and optimizer steps in all (none for a method without trainable parameters);
    /// both count the rows the objective trains on (labelled or unlabelled).
    fn plan(&self, run: &MethodRun, trains: bool) -> (usize, usize) {
        if !trains {
            return (0, 0);
        }
        let train = &self.config.train;
        let rows = self.data.training_set(run.objective.inputs).0.len();
        let per_epoch = rows.div_ceil(train.batch_size);
        (train.max_steps.map_or(train.epochs, |s| s.div_ceil(per_epoch)), train::total_steps(self.config, rows))
    }

    /// The model before training (zero-shot, or in-context for ICL), logged as epoch 0.
    fn zero_shot(&self, run: &mut MethodRun, record: &mut RunRecord) -> Result<Headline> {
        let headline = self.evaluate(run, 0, 0, record)?;
        self.dir.append_metrics(&EpochMetrics {
            epoch: 0,
            step: 0,
            train_loss: f64::NAN,
            lr: 0.0,
            tokens: 0,
            method_metrics: vec![],
            eval: Some(serde_json::to_value(&headline).unwrap_or_default()),
        })?;
        record.zero_shot = Some(headline.clone());
        Ok(headline)
    }

    /// One epoch (`at` = this epoch, the run's epochs, its optimizer steps): train, evaluate
    /// when due, log, checkpoint.
    fn epoch(
        &self,
        run: &mut MethodRun,
        optimizer: &mut AdamW,
        (epoch, epochs, total): (usize, usize, usize),
        from: Option<PartialEpoch>,
        record: &mut RunRecord,
        best: &mut Option<(usize, Headline)>,
    ) -> Result<()> {
        let config = self.config;
        let mut meter = PhaseMeter::start(self.model.device());
        let tokens_before = from.as_ref().map_or(0, |p| p.tokens);
        let end =
            train::train_epoch_from(config, run, self.data, &self.model.tokenizer, optimizer, (epoch, total), from)?;
        meter.add_tokens(match &end {
            EpochEnd::Done(metrics) => metrics.tokens - tokens_before,
            EpochEnd::Stopped(partial) => partial.tokens - tokens_before,
        });
        let used = meter.finish();
        record.timings.train += used.wall_seconds;
        record.train_resources = Some(match record.train_resources.take() {
            Some(before) => before.then(used),
            None => used,
        });
        let mut metrics = match end {
            EpochEnd::Done(metrics) => metrics,
            EpochEnd::Stopped(partial) => {
                let saved = if config.train.checkpoint {
                    self.checkpoint(run, optimizer, epoch, Some(partial), record)?;
                    "; --resume continues from the checkpoint written then"
                } else {
                    " (train.checkpoint = false: nothing kept)"
                };
                return Err(Error::Terminated { step: optimizer.step, epoch: epoch + 1, saved: saved.into() });
            }
        };
        if config.train.eval_every_epoch || epoch + 1 == epochs {
            let headline = self.evaluate(run, optimizer.step, epoch + 1, record)?;
            if best.as_ref().is_none_or(|(_, b)| headline.acc_in > b.acc_in) {
                *best = Some((epoch + 1, headline.clone()));
            }
            metrics.eval = Some(serde_json::to_value(&headline).unwrap_or_default());
            record.last = Some(headline);
        }
        let acc_in = record.last.as_ref().map(|h| h.acc_in);
        tracing::info!(epoch = epoch + 1, loss = metrics.train_loss, acc_in, "epoch done");
        self.dir.append_metrics(&metrics)?;
        if config.train.checkpoint {
            self.checkpoint(run, optimizer, epoch + 1, None, record)?;
        }
        Ok(())
    }

    /// Saves the optimizer and what the run measured so far, after `epochs_done` epochs and the
    /// `partial` steps of the next.
    fn checkpoint(
        &self,
        run: &MethodRun,
        optimizer: &AdamW,
        epochs_done: usize,
        partial: Option<PartialEpoch>,
        record: &RunRecord,
    ) -> Result<()> {
        let progress = Progress {
            epochs_done,
            steps: optimizer.step,
            timings: Timings {
                total: record.timings.total + self.start.elapsed().as_secs_f64(),
                ..record.timings.clone()
            },
            train_resources: record.train_resources.clone(),
            zero_shot: record.zero_shot.clone(),
            icl_reference: record.icl_reference.clone(),
            partial,
        };
        train::save_checkpoint(self.dir, optimizer, run, &progress)
    }

    /// [`evaluate`] after `step` optimizer steps (`epoch` epochs), its time added to the
    /// record's and its predictions written to `predictions/epoch-N/`.
    fn evaluate(&self, run: &mut MethodRun, step: usize, epoch: usize, record: &mut RunRecord) -> Result<Headline> {
        let folder = predictions::epoch_folder(&self.dir.predictions(), epoch);
        let (headline, seconds) = evaluate(run, self.data, self.model, self.config, step, Some(&folder))?;
        record.timings.eval += seconds;
        Ok(headline)
    }
}

/// The best evaluation among the logged metrics lines (for resumed runs).
fn best_of(logged: &[serde_json::Value], dir: &RunDir) -> Result<Option<(usize, Headline)>> {
    let mut best: Option<(usize, Headline)> = None;
    for line in logged {
        let (Some(epoch), Some(headline)) = (line["epoch"].as_u64(), headline_of(line, dir)?) else { continue };
        if best.as_ref().is_none_or(|(_, b)| headline.acc_in > b.acc_in) {
            best = Some((epoch as usize, headline));
        }
    }
    Ok(best)
}

/// The evaluation a metrics line holds, if any.
fn headline_of(line: &serde_json::Value, dir: &RunDir) -> Result<Option<Headline>> {
    match line.get("eval").filter(|e| !e.is_null()) {
        Some(eval) => Ok(Some(serde_json::from_value(eval.clone()).map_err(Error::json(dir.metrics()))?)),
        None => Ok(None),
    }
}

/// Scores every eval set with the objective's `predict` (the model after `step` optimizer
/// steps), writing each set's per-example predictions into `written_to` when given; returns
/// the headline and seconds. Scores that are NaN or infinite fail the run.
fn evaluate(
    run: &mut MethodRun,
    data: &RunData,
    model: &Model,
    config: &RunConfig,
    step: usize,
    written_to: Option<&Path>,
) -> Result<(Headline, f64)> {
    run.set_train(false)?;
    let options = EvalOptions {
        batch_size: config.eval.batch_size,
        max_length: config.train.max_length,
        context: String::new(),
        device: model.device(),
        metrics: data.task.metrics.to_vec(),
    };
    let mut reports: Vec<EvalReport> = Vec::new();
    let bar = train::progress_bar(data.eval.len() as u64, "eval");
    for set in &data.eval {
        let mut scorer = |b: &crate::data::batch::Batch| {
            config.train.autocast.run(model.device(), || run.predict(data.method_batch(b, &set.data, false)))
        };
        reports.push(harness::evaluate(
            std::slice::from_ref(set),
            &data.prompt,
            &model.tokenizer,
            &options,
            &mut scorer,
        )?);
        bar.inc(1);
        if let (Some(folder), Some(report)) = (written_to, reports.last()) {
            for scored in &report.sets {
                let file = predictions::set_file(folder, &scored.name);
                predictions::write(&file, &set.data.label_names, &scored.predictions)?;
            }
        }
        if let Some(set) = reports.last().and_then(|r| r.sets.iter().find(|s| s.non_finite > 0)) {
            let parameter =
                model.vs.variables().into_iter().chain(run.trainable()).find_map(|(name, tensor)| {
                    (!bool::try_from(tensor.isfinite().all()).unwrap_or(true)).then_some(name)
                });
            return Err(Error::NonFiniteScores { set: set.name.clone(), rows: set.non_finite, step, parameter });
        }
    }
    bar.finish_and_clear();
    let seconds = reports.iter().map(|r| r.resources.wall_seconds).sum();
    Ok((headline(&data.eval, reports), seconds))
}

fn headline(sets: &[EvalSet], reports: Vec<EvalReport>) -> Headline {
    let accuracy = |r: &EvalReport| r.sets.first().map_or(f64::NAN, |s| s.scores.verbalizer.accuracy);
    let acc_in = sets.iter().zip(&reports).find(|(s, _)| s.in_domain).map_or(f64::NAN, |(_, r)| accuracy(r));
    let ood: Vec<f64> = sets.iter().zip(&reports).filter(|(s, _)| !s.in_domain).map(|(_, r)| accuracy(r)).collect();
    let acc_ood = (!ood.is_empty()).then(|| ood.iter().sum::<f64>() / ood.len() as f64);
    let sets: Vec<_> = reports.into_iter().flat_map(|r| r.sets).collect();
    Headline { acc_in, acc_ood, report: serde_json::to_value(sets).unwrap_or_default() }
}

fn provenance(config: &RunConfig, registry: &Registry) -> Result<Vec<MethodProvenance>> {
    let roles =
        std::iter::once((&config.method, Role::Objective)).chain(config.adapters.iter().map(|a| (a, Role::Adapter)));
    roles
        .map(|(m, role)| {
            let d = registry.find(&m.name, role)?;
            Ok(MethodProvenance {
                name: d.name.clone(),
                role,
                version: d.version.clone(),
                library: d.library.clone(),
                sha256: sha256_of(&d.library)?,
            })
        })
        .collect()
}
