//! One round of `east run`: each stage as a [`Stage`] keyed by its settings and the keys of its
//! inputs, so that a rerun skips, resumes or redoes it (see [`super::stage`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::board::RunBoard;
use super::layout::{dataset_dir_name, RunLayout};
use super::serving::{self, ServerSlot};
use super::stage::{key_of, remove_path, short_hex, Outcome, Stage, StageRecord};
use super::{dataset_fingerprint, questions_fingerprint, ModelRef, RoundSummary};
use crate::config::Config;
use crate::eval::{self, EvalSettings};
use crate::io::FileLock;
use crate::model::ModelConfig;
use crate::progress::MetricsLog;
use crate::sample::{self, SampleSettings};
use crate::stats::Accuracy;
use crate::train::TrainJob;
use crate::{cluster, data, generate, weight};

/// Round `t` of the run: where its stages write, and what they did.
pub(super) struct Round<'a> {
    pub config: &'a Config,
    pub layout: &'a RunLayout,
    pub t: usize,
    pub log: &'a mut MetricsLog,
    pub summary: RoundSummary,
    /// `run.report_to = ["tensorboard"]`: the run's event folder.
    pub board: Option<&'a RunBoard>,
}

impl Round<'_> {
    /// Sample → cluster → weight → train from `current`; returns the trained model.
    pub fn self_train(
        &mut self,
        current: &ModelRef,
        server: &mut ServerSlot,
    ) -> anyhow::Result<ModelRef> {
        let round_dir = self.layout.round(self.t);
        std::fs::create_dir_all(&round_dir)
            .with_context(|| format!("creating {}", round_dir.display()))?;
        let (samples, sample_key) = self.sample(current, server)?;
        let clusters_key = self.cluster(&samples, &sample_key)?;
        let weight_key = self.weight(&samples, &sample_key, &clusters_key)?;
        // Training needs the GPU memory a serving engine holds.
        server.stop()?;
        self.train(current, &weight_key)
    }

    /// Logs to the run's event folder, if it has one, what `f` reads from a finished stage.
    fn report(&self, f: impl FnOnce(&RunBoard) -> anyhow::Result<()>) -> anyhow::Result<()> {
        self.board.map_or(Ok(()), f)
    }

    /// Records a stage's outcome; returns its key.
    fn done(&mut self, record: StageRecord) -> String {
        let key = record.key.clone();
        self.summary.stages.push(record);
        key
    }

    /// Samples from `current` into the cache shared by every run under run.dir (or takes
    /// `run.samples` in round 1), linked into the round folder; returns the link and the key.
    fn sample(
        &mut self,
        current: &ModelRef,
        server: &mut ServerSlot,
    ) -> anyhow::Result<(PathBuf, String)> {
        let (config, t) = (self.config, self.t);
        let (source, record) = match (&config.run.samples, t) {
            (Some(external), 1) => external_samples(Path::new(external), t, self.log)?,
            _ => self.sample_into_cache(current, server)?,
        };
        let samples = self.layout.samples(t);
        link_into_round(&source, &samples)?;
        self.report(|b| b.sampled(t, &sample::log_path(&source)))?;
        Ok((samples, self.done(record)))
    }

    fn sample_into_cache(
        &mut self,
        current: &ModelRef,
        server: &mut ServerSlot,
    ) -> anyhow::Result<(PathBuf, StageRecord)> {
        let (config, layout, t) = (self.config, self.layout, self.t);
        let name = if t == 1 {
            current.label.as_str()
        } else {
            "trained"
        };
        let settings = SampleSettings::new(
            format!("{name} [{}]", current.key),
            &config.data,
            &config.sample,
        );
        let mut inputs = serde_json::json!({"settings": settings, "model": current.key,
            "questions": questions_fingerprint(config)?});
        serving::key_requests(&mut inputs, config, config.sample.backend);
        let cached = layout
            .samples_cache
            .join(format!("{}.jsonl", key_of(&inputs)));
        let _cache_lock = FileLock::acquire(
            &crate::io::output_lock_path(&cached),
            &format!("samples cache file {}", cached.display()),
        )?;
        let stage = Stage {
            name: "sample",
            round: t,
            output: &cached,
            sidecars: vec![sample::meta_path(&cached), sample::log_path(&cached)],
            inputs,
        };
        let record = stage.run(self.log, || {
            let questions = config.data.questions()?;
            // round t samples from round t−1's model (0: the base), or its server
            let engine = generate::open(&current.model, config.sample.backend, || {
                server.get(config, layout, t - 1, current, config.sample.n)
            })?;
            sample::sample_questions(engine.as_ref(), &questions, &settings, None, &cached)?;
            Ok(())
        })?;
        Ok((cached, record))
    }

    fn cluster(&mut self, samples: &Path, sample_key: &str) -> anyhow::Result<String> {
        let (config, t) = (self.config, self.t);
        let clusters = self.layout.clusters(t);
        let record = Stage {
            name: "cluster",
            round: t,
            output: &clusters,
            sidecars: vec![],
            inputs: serde_json::json!({"samples": sample_key, "cluster": config.cluster,
                "grader": crate::grade::VERSION}),
        }
        .run(self.log, || {
            cluster::cluster_file(samples, &clusters, &config.cluster, None)?;
            Ok(())
        })?;
        self.report(|b| b.clustered(t, &clusters))?;
        Ok(self.done(record))
    }

    fn weight(
        &mut self,
        samples: &Path,
        sample_key: &str,
        clusters_key: &str,
    ) -> anyhow::Result<String> {
        let t = self.t;
        let (clusters, train_data) = (self.layout.clusters(t), self.layout.train_data(t));
        let options = self.config.weight_options();
        let record = Stage {
            name: "weight",
            round: t,
            output: &train_data,
            sidecars: vec![weight::trainset::summary_path(&train_data)],
            inputs: serde_json::json!({"clusters": clusters_key, "samples": sample_key,
                "weight": options}),
        }
        .run(self.log, || {
            // A round in which no question can train is an error of weight_files itself.
            weight::weight_files(&clusters, samples, &train_data, &options)?;
            Ok(())
        })?;
        self.report(|b| b.weighted(t, &train_data))?;
        Ok(self.done(record))
    }

    /// Trains `current` on the round's training set. With LoRA and another round to come, the
    /// merged model is written too: the next round trains a fresh adapter on top of it.
    fn train(&mut self, current: &ModelRef, weight_key: &str) -> anyhow::Result<ModelRef> {
        let (config, t) = (self.config, self.t);
        let checkpoint = self.layout.checkpoint(t);
        let data = self.layout.train_data(t);
        let mut train = config.train.clone();
        train.merge |= train.lora && t < config.run.rounds;
        // the lock `east train --out` takes
        let _lock = FileLock::output_dir(&checkpoint)?;
        let record = Stage {
            name: "train",
            round: t,
            output: &checkpoint,
            sidecars: vec![],
            // the same identity of the training settings as `east train`'s run fingerprint
            inputs: serde_json::json!({"model": current.key, "data": weight_key,
                "train": train.identity()}),
        }
        .run(self.log, || {
            let mut job = TrainJob::new(current.model.clone(), train, data, checkpoint.clone());
            job.board = self.board.map(|b| b.training(self.layout, t)).transpose()?;
            crate::train::train(&job)?;
            Ok(())
        })?;
        self.report(|b| b.trained(self.layout, t))?;
        let key = self.done(record);
        let merged = checkpoint.join("merged");
        let path = if merged.join("config.json").exists() {
            merged
        } else {
            checkpoint
        };
        Ok(ModelRef {
            model: ModelConfig {
                path: path.display().to_string(),
                adapter: None,
                ..current.model.clone()
            },
            key,
            label: path.display().to_string(),
        })
    }

    /// Greedy evaluation of `model` on every `[eval] datasets` entry.
    pub fn evaluate(&mut self, model: &ModelRef, server: &mut ServerSlot) -> anyhow::Result<()> {
        for dataset in &self.config.eval.datasets {
            self.evaluate_on(dataset, model, server)?;
        }
        Ok(())
    }

    fn evaluate_on(
        &mut self,
        dataset: &str,
        model: &ModelRef,
        server: &mut ServerSlot,
    ) -> anyhow::Result<()> {
        let (config, layout, t) = (self.config, self.layout, self.t);
        let dir = layout.eval_dir(t, dataset);
        let settings = EvalSettings::new(&config.eval, model.label.clone(), dataset);
        let mut inputs = serde_json::json!({"model": model.key, "eval": settings,
            "fields": config.data.fields, "grader": crate::grade::VERSION,
            "questions": dataset_fingerprint(dataset)});
        serving::key_requests(&mut inputs, config, config.eval.backend);
        // the lock `east eval --out` takes: no evaluation of its own into this folder meanwhile
        let _lock = FileLock::output_dir(&dir)?;
        let record = Stage {
            name: &format!("eval {}", dataset_dir_name(dataset)),
            round: t,
            output: &dir,
            sidecars: vec![],
            inputs,
        }
        .run(self.log, || {
            let e = &config.eval;
            let questions = data::load_questions(dataset, &e.split, e.limit, &config.data.fields)?;
            let engine = generate::open(&model.model, e.backend, || {
                server.get(config, layout, t, model, 1)
            })?;
            eval::evaluate(engine.as_ref(), &questions, &settings, &dir)?;
            Ok(())
        })?;
        self.done(record);
        let path = eval::report_path(&dir);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let report: eval::EvalReport =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        self.summary
            .accuracy
            .insert(dataset.to_string(), report.accuracy);
        if report.n > 0 {
            let acc = Accuracy::of(report.correct, report.n);
            self.summary.evals.insert(dataset.to_string(), acc);
        }
        self.report(|b| b.evaluated(t, &dataset_dir_name(dataset), report.accuracy))?;
        self.log.log(
            &serde_json::json!({"event": "eval", "round": t, "dataset": dataset,
            "accuracy": report.accuracy, "correct": report.correct, "n": report.n}),
        )?;
        Ok(())
    }
}

/// Round 1's samples from a file made elsewhere: its key is the hash of its bytes, so editing or
/// replacing the file reruns everything after sampling.
fn external_samples(
    path: &Path,
    t: usize,
    log: &mut MetricsLog,
) -> anyhow::Result<(PathBuf, StageRecord)> {
    use std::io::Read;
    let started = Instant::now();
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("run.samples: opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("run.samples: reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let key = short_hex(&hasher.finalize());
    log.log(&serde_json::json!({"event": "stage", "stage": "sample", "round": t, "outcome": "external", "key": key, "file": path}))?;
    let record = StageRecord {
        stage: "sample".into(),
        outcome: Outcome::Skipped,
        seconds: started.elapsed().as_secs_f64(),
        key,
    };
    Ok((path.to_path_buf(), record))
}

/// Points `link` (in the round folder) at the cached samples file.
fn link_into_round(cached: &Path, link: &Path) -> anyhow::Result<()> {
    let target =
        std::fs::canonicalize(cached).with_context(|| format!("resolving {}", cached.display()))?;
    if std::fs::read_link(link).ok().as_deref() == Some(target.as_path()) {
        return Ok(());
    }
    let tmp = crate::io::tmp_name(link);
    remove_path(&tmp)?;
    std::os::unix::fs::symlink(&target, &tmp)
        .with_context(|| format!("linking {}", link.display()))?;
    std::fs::rename(&tmp, link).with_context(|| format!("linking {}", link.display()))?;
    Ok(())
}
