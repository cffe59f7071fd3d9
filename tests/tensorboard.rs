//! TensorBoard event files (`train.report_to = ["tensorboard"]`) against TensorBoard itself:
//! east writes byte for byte the file TensorBoard's own writer wrote for the same events
//! (framing, masked CRC-32C, protobuf, histogram buckets); east's reader gets from a killed and
//! resumed training's files what TensorBoard's EventAccumulator got; and a training killed
//! after a resume checkpoint logs every step once, with train_log.jsonl's values.
//! The fixtures come from `scripts/reference/tensorboard_reference.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use east::tensorboard::{
    self, frame, histogram, Event, EventFile, EventWriter, Value, ValueData, What,
};
use east::train::{SharedBoard, TrainJob};

#[path = "support/run_board.rs"]
mod run_board;
use serde_json::{json, Value as Json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tensorboard")
        .join(name)
}

fn summary(wall_time: f64, step: i64, values: Vec<Value>) -> Event {
    Event {
        wall_time,
        step,
        what: What::Summary(values),
    }
}

/// The events `tensorboard_writer.json` describes, built with east's types and histogram.
fn described_events(desc: &Json) -> Vec<Event> {
    let fv = &desc["file_version"];
    let mut events = vec![Event {
        wall_time: fv["wall_time"].as_f64().unwrap(),
        step: 0,
        what: What::FileVersion {
            version: fv["version"].as_str().unwrap().into(),
            writer: Some(fv["writer"].as_str().unwrap().into()),
        },
    }];
    for e in desc["events"].as_array().unwrap() {
        let (t, step) = (
            e["wall_time"].as_f64().unwrap(),
            e["step"].as_i64().unwrap(),
        );
        let pairs = |key: &str| -> Vec<(String, Json)> {
            e[key].as_array().map_or(Vec::new(), |a| {
                a.iter()
                    .map(|p| (p[0].as_str().unwrap().to_string(), p[1].clone()))
                    .collect()
            })
        };
        let mut values: Vec<Value> = pairs("scalars")
            .into_iter()
            .map(|(tag, v)| Value {
                tag,
                data: ValueData::Simple(v.as_f64().unwrap() as f32),
            })
            .collect();
        values.extend(pairs("histograms").into_iter().map(|(tag, v)| {
            let xs: Vec<f64> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            Value {
                tag,
                data: ValueData::Histogram(histogram(&xs).unwrap()),
            }
        }));
        events.push(match e["session_start"].as_bool() {
            Some(true) => Event {
                wall_time: t,
                step,
                what: What::SessionStart,
            },
            _ => summary(t, step, values),
        });
    }
    events
}

#[test]
fn east_writes_the_bytes_tensorboards_writer_wrote() {
    let desc: Json =
        serde_json::from_str(&std::fs::read_to_string(fixture("tensorboard_writer.json")).unwrap())
            .unwrap();
    let want = std::fs::read(fixture("tensorboard_writer.tfevents")).unwrap();
    let events = described_events(&desc);
    let ours: Vec<u8> = events.iter().flat_map(|e| frame(&e.encode())).collect();
    // record by record first, for a readable failure
    let mut at = 0;
    for (i, e) in events.iter().enumerate() {
        let rec = frame(&e.encode());
        assert_eq!(
            rec,
            want[at..(at + rec.len()).min(want.len())],
            "record {i} ({e:?}) differs from TensorBoard's"
        );
        at += rec.len();
    }
    assert_eq!(ours, want);
    // and east's reader gives the events back
    let read = tensorboard::read_file(&fixture("tensorboard_writer.tfevents")).unwrap();
    assert_eq!(read.stopped, None);
    assert_eq!(read.events, events);
}

/// Each scalar tag's (step, value) series, over files in order.
fn series(files: &[EventFile]) -> BTreeMap<String, Vec<(i64, f32)>> {
    let mut out: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for e in files.iter().flat_map(|f| &f.events) {
        if let What::Summary(values) = &e.what {
            for v in values {
                if let ValueData::Simple(x) = v.data {
                    out.entry(v.tag.clone()).or_default().push((e.step, x));
                }
            }
        }
    }
    out
}

#[test]
fn easts_reader_gets_what_event_accumulator_got() {
    let reference: Json = serde_json::from_str(
        &std::fs::read_to_string(fixture("accumulator_reference.json")).unwrap(),
    )
    .unwrap();
    let files: Vec<EventFile> = ["resumed_0.tfevents", "resumed_1.tfevents"]
        .iter()
        .map(|n| tensorboard::read_file(&fixture(n)).unwrap())
        .collect();
    // the resumed session's file opens with the restart mark after the kept steps
    let resumed_at = reference["resumed_at"].as_i64().unwrap();
    assert_eq!(files[1].events[1].what, What::SessionStart);
    assert_eq!(files[1].events[1].step, resumed_at + 1);
    let ours = series(&files);
    let theirs = reference["series"].as_object().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (tag, points) in theirs {
        let points: Vec<(i64, f32)> = points
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap() as f32))
            .collect();
        assert_eq!(ours[tag], points, "{tag}");
    }
}

const SYSTEM: &str = "Please reason step by step, and put your final answer within \\boxed{}.";

/// A tiny model and a DPO training file (the DPO extras are logged too).
fn tiny_setup(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("model");
    east::model::testing::write_tiny_model(&model, 11).unwrap();
    let msgs =
        |q: &str| json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]);
    let said = |a: &str| json!([{"role": "assistant", "content": a}]);
    let rows = [
        ("What is 2+3?", "2+3=5. \\boxed{5}", "\\boxed{6}", 0.5),
        ("What is 4+4?", "4+4=8 so \\boxed{8}", "\\boxed{9}", 1.0),
        ("the sum of 1 and 1?", "\\boxed{2}", "\\boxed{3}", 1.5),
        (
            "sides of a box?",
            "a box has 6 sides: \\boxed{6}",
            "\\boxed{4}",
            2.0,
        ),
    ];
    let text: String = rows
        .iter()
        .enumerate()
        .map(|(i, (q, a, b, w))| {
            format!(
                "{}\n",
                json!({"id": format!("q{i}"), "prompt": msgs(q), "chosen": said(a), "rejected": said(b), "weight": w})
            )
        })
        .collect();
    let data = dir.join("dpo.jsonl");
    std::fs::write(&data, text).unwrap();
    (model, data)
}

const STEPS: usize = 30;

fn train_cmd(model: &Path, data: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_east"));
    c.arg("train");
    c.arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out);
    let settings = format!(
        "--loss dpo --batch-size 2 --micro-batch-size 1 --max-steps {STEPS} --lr 1e-3 \
         --save-steps 2 --report-to tensorboard"
    );
    c.args(settings.split_whitespace());
    c
}

/// The greatest summary step in `out/tensorboard` (the writer may be mid-record: a torn tail
/// is read as the end).
fn last_logged_step(out: &Path) -> i64 {
    let files = tensorboard::read_dir(&out.join("tensorboard")).unwrap_or_default();
    series(&files)
        .get("train/loss")
        .and_then(|s| s.iter().map(|p| p.0).max())
        .unwrap_or(0)
}

/// The step of the resume checkpoint in `out` (under its temporary name when the kill came
/// between the two renames of a save).
fn checkpoint_step(out: &Path) -> Option<i64> {
    let old = std::fs::read_dir(out)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".resume.old-")
        });
    [Some(out.join("resume")), old]
        .into_iter()
        .flatten()
        .filter_map(|d| std::fs::read_to_string(d.join("state.json")).ok())
        .filter_map(|t| serde_json::from_str::<Json>(&t).ok())
        .find_map(|v| v["step"].as_i64())
}

/// Trains into `out`, kills the process once a resume checkpoint exists and TensorBoard has
/// steps after it, and trains again to the end. Returns the checkpoint's step.
fn killed_and_resumed(model: &Path, data: &Path, out: &Path) -> i64 {
    // a checkpoint saved between the check and the kill can cover every logged step; the run
    // is then retried, as it would not test the resume's cut
    let saved = (0..5)
        .find_map(|_| kill_after_the_checkpoint(model, data, out))
        .expect("five kills all came right after a checkpoint");
    let o = train_cmd(model, data, out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!("resumed at step {saved}")),
        "{stdout}"
    );
    saved
}

/// Trains into a fresh `out` and kills it once its event files hold steps after its resume
/// checkpoint: the checkpoint's step, if they still do after the kill.
fn kill_after_the_checkpoint(model: &Path, data: &Path, out: &Path) -> Option<i64> {
    let _ = std::fs::remove_dir_all(out);
    let mut child = train_cmd(model, data, out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoint_step(out).is_none_or(|s| last_logged_step(out) <= s) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        assert!(
            Instant::now() < deadline,
            "no checkpoint within two minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let saved = checkpoint_step(out).unwrap();
    (last_logged_step(out) > saved).then_some(saved)
}

#[test]
fn a_killed_and_resumed_training_logs_each_step_once() {
    let d = tempfile::tempdir().unwrap();
    let (model, data) = tiny_setup(d.path());
    let out = d.path().join("run");
    let saved = killed_and_resumed(&model, &data, &out);
    let files = tensorboard::read_dir(&out.join("tensorboard")).unwrap();
    assert_eq!(files.len(), 2, "one file per session");
    assert!(files.iter().all(|f| f.stopped.is_none()));
    assert_eq!(files[1].events[1].what, What::SessionStart);
    assert_eq!(files[1].events[1].step, saved + 1);
    let log = run_board::json_lines(&out.join("train_log.jsonl"));
    assert_eq!(log.len(), STEPS);
    let got = series(&files);
    for key in [
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "weight_mean",
        "rewards/margins",
    ] {
        let want: Vec<(i64, f32)> = log
            .iter()
            .map(|l| (l["step"].as_i64().unwrap(), l[key].as_f64().unwrap() as f32))
            .collect();
        assert_eq!(got[&format!("train/{key}")], want, "train/{key}");
    }
    let steps: Vec<i64> = got["train/loss"].iter().map(|p| p.0).collect();
    assert_eq!(steps, (1..=STEPS as i64).collect::<Vec<_>>());
}

#[test]
fn wandb_is_refused_with_the_way_in() {
    let o = Command::new(env!("CARGO_BIN_EXE_east"))
        .args([
            "train",
            "--data",
            "x.jsonl",
            "--out",
            "x",
            "--report-to",
            "wandb",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("let W&B read the event files"), "{err}");
}

#[test]
fn a_training_into_a_shared_folder_follows_the_steps_before_it() {
    let d = tempfile::tempdir().unwrap();
    let (model, data) = tiny_setup(d.path());
    let shared = d.path().join("run_tb");
    // another stage's scalar, an earlier training's steps, and stale steps of this one
    let mut w = EventWriter::create(&shared).unwrap();
    w.scalars(1, &[("eval/accuracy".into(), 0.5)]).unwrap();
    w.scalars(50, &[("train/loss".into(), 1.0)]).unwrap();
    w.scalars(103, &[("train/loss".into(), 9.0)]).unwrap();
    let overrides = [
        format!("model.path={}", model.display()),
        "train.loss=\"dpo\"".into(),
        "train.batch_size=2".into(),
        "train.micro_batch_size=1".into(),
        "train.max_steps=4".into(),
    ];
    let c = east::config::Config::from_toml_str("", "test", &overrides).unwrap();
    let out = d.path().join("ckpt");
    let job = TrainJob {
        progress: false,
        board: Some(SharedBoard {
            writer: Arc::new(Mutex::new(w)),
            before: 100,
        }),
        ..TrainJob::new(c.model.clone(), c.train.clone(), data, out.clone())
    };
    east::train::train(&job).unwrap();
    let got = series(&tensorboard::read_dir(&shared).unwrap());
    assert_eq!(got["eval/accuracy"], [(1, 0.5)]);
    let log = run_board::json_lines(&out.join("train_log.jsonl"));
    let mut want = vec![(50, 1.0f32)];
    want.extend(log.iter().map(|l| {
        (
            100 + l["step"].as_i64().unwrap(),
            l["loss"].as_f64().unwrap() as f32,
        )
    }));
    assert_eq!(got["train/loss"], want);
    // train.report_to is off: the checkpoint folder has no event files
    assert!(!out.join("tensorboard").exists());
}

/// Writes a straight and a killed-and-resumed run for
/// `scripts/reference/tensorboard_reference.py check /tmp/east-tb`.
#[test]
#[ignore]
fn dump_tensorboard_runs() {
    let root = Path::new("/tmp/east-tb");
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    let (model, data) = tiny_setup(root);
    let o = train_cmd(&model, &data, &root.join("straight"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resumed = root.join("resumed");
    let saved = killed_and_resumed(&model, &data, &resumed);
    std::fs::write(resumed.join("resumed_at.txt"), saved.to_string()).unwrap();
}
