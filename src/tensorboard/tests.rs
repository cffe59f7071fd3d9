use std::fs;
use std::io::Write;

use super::*;

fn steps(files: &[EventFile]) -> Vec<i64> {
    files
        .iter()
        .flat_map(|f| &f.events)
        .filter(|e| matches!(e.what, What::Summary(_)))
        .map(|e| e.step)
        .collect()
}

#[test]
fn a_writer_starts_with_the_file_version_and_appends_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    // no event, no file
    assert_eq!(w.path(), None);
    w.scalars(2, &[]).unwrap();
    assert!(event_files(dir.path()).unwrap().is_empty());
    w.scalars(1, &[("train/loss".into(), 0.5), ("train/lr".into(), 1e-6)])
        .unwrap();
    let name = w
        .path()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    w.summary(
        1,
        vec![Value::histogram("h", histogram(&[1.0, 2.0]).unwrap())],
    )
    .unwrap();
    let f = read_file(w.path().unwrap()).unwrap();
    assert_eq!(f.stopped, None);
    assert_eq!(f.events.len(), 3);
    assert!(matches!(
        &f.events[0].what,
        What::FileVersion { version, writer: Some(w) } if version == FILE_VERSION && w == "east"
    ));
    let What::Summary(values) = &f.events[1].what else {
        panic!("{:?}", f.events[1])
    };
    assert_eq!(values[0].tag, "train/loss");
    assert_eq!(values[1].data, ValueData::Simple(1e-6f32));
    assert!(f.events[1].wall_time >= f.events[0].wall_time);
}

#[test]
fn a_new_session_sorts_after_the_files_already_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for _ in 0..3 {
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(1, &[("x".into(), 1.0)]).unwrap();
        paths.push(w.path().unwrap().to_path_buf());
    }
    assert_eq!(event_files(dir.path()).unwrap(), paths);
}

#[test]
fn retain_drops_later_steps_and_a_torn_tail_and_removes_emptied_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = EventWriter::create(dir.path()).unwrap();
    for step in 1..=5 {
        first
            .scalars(step, &[("loss".into(), step as f64)])
            .unwrap();
    }
    let mut second = EventWriter::create(dir.path()).unwrap();
    second.scalars(6, &[("loss".into(), 6.0)]).unwrap();
    // a kill in the middle of a write
    let torn = frame(
        &Event {
            wall_time: 1.0,
            step: 7,
            what: What::Summary(vec![]),
        }
        .encode(),
    );
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(second.path().unwrap())
        .unwrap();
    f.write_all(&torn[..torn.len() - 3]).unwrap();
    assert_eq!(
        read_file(second.path().unwrap()).unwrap().stopped,
        Some(Stop::Torn {
            offset: fs::metadata(second.path().unwrap()).unwrap().len() as usize - torn.len() + 3
        })
    );

    let r = retain(dir.path(), |e| e.step <= 3).unwrap();
    assert_eq!(
        r,
        Retained {
            dropped: 2 + 1 + 1,
            removed: 1,
            damaged: vec![]
        }
    );
    assert!(!second.path().unwrap().exists());
    let files = read_dir(dir.path()).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(steps(&files), [1, 2, 3]);
    // no temporary file is left behind, and a second pass changes nothing
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    let before = fs::read(first.path().unwrap()).unwrap();
    assert_eq!(
        retain(dir.path(), |e| e.step <= 3).unwrap(),
        Retained::default()
    );
    assert_eq!(fs::read(first.path().unwrap()).unwrap(), before);
}

#[test]
fn retain_reports_a_damaged_record_and_keeps_what_precedes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    w.scalars(1, &[("a".into(), 1.0)]).unwrap();
    let good = fs::metadata(w.path().unwrap()).unwrap().len() as usize;
    w.scalars(2, &[("a".into(), 2.0)]).unwrap();
    let mut bytes = fs::read(w.path().unwrap()).unwrap();
    bytes[good + 14] ^= 0x55;
    fs::write(w.path().unwrap(), &bytes).unwrap();
    let r = retain(dir.path(), |_| true).unwrap();
    assert_eq!(r.damaged, vec![(w.path().unwrap().to_path_buf(), good)]);
    assert_eq!(steps(&read_dir(dir.path()).unwrap()), [1]);
}

#[test]
fn a_missing_folder_has_no_event_files() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("nothing");
    assert!(event_files(&gone).unwrap().is_empty());
    assert_eq!(retain(&gone, |_| false).unwrap(), Retained::default());
}

#[test]
fn scalars_of_a_log_line_take_its_numbers() {
    let line = serde_json::json!({"step": 3, "loss": 0.5, "kl": null, "note": "x", "lr": 1e-6});
    let mut s = scalars_of("train/", &line, &["step"]);
    s.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        s,
        [
            ("train/loss".to_string(), 0.5),
            ("train/lr".to_string(), 1e-6)
        ]
    );
}

#[test]
fn report_to_reads_trl_spellings_and_refuses_the_rest() {
    let parse = |toml_value: &str| {
        #[derive(serde::Deserialize)]
        struct T {
            #[allow(dead_code)]
            report_to: ReportTo,
        }
        toml::from_str::<T>(&format!("report_to = {toml_value}"))
            .map(|t| t.report_to)
            .map_err(|e| e.to_string())
    };
    let on = ReportTo { tensorboard: true };
    assert_eq!(parse("[\"tensorboard\"]"), Ok(on));
    assert_eq!(parse("\"tensorboard\""), Ok(on));
    assert_eq!(parse("\"all\""), Ok(on));
    assert_eq!(parse("\"none\""), Ok(ReportTo::default()));
    assert_eq!(parse("[]"), Ok(ReportTo::default()));
    assert!(parse("[\"wandb\"]")
        .unwrap_err()
        .contains("let W&B read the event files"));
    assert!(parse("[\"comet\"]")
        .unwrap_err()
        .contains("unknown `comet`"));
    assert!(parse("[\"none\", \"tensorboard\"]").is_err());
    assert_eq!("tensorboard".parse::<ReportTo>(), Ok(on));
    assert_eq!(
        serde_json::to_string(&ReportTo::default()).unwrap(),
        "[\"none\"]"
    );
    assert_eq!(serde_json::to_string(&on).unwrap(), "[\"tensorboard\"]");
}

#[test]
fn put_logs_a_value_once_and_replaces_a_changed_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = EventWriter::create(dir.path()).unwrap();
    old.scalars(1, &[("eval/acc".into(), 0.25), ("other".into(), 7.0)])
        .unwrap();
    old.scalars(2, &[("eval/acc".into(), 0.5)]).unwrap();
    drop(old);
    let mut w = EventWriter::create(dir.path()).unwrap();
    // the same value at the same step: nothing written, not even a file
    w.put(vec![(2, vec![Value::scalar("eval/acc", 0.5)])])
        .unwrap();
    assert_eq!(event_files(dir.path()).unwrap().len(), 1);
    // a new value at step 1 replaces the old one; its event keeps its other tag
    w.put(vec![(
        1,
        vec![Value::scalar("eval/acc", 0.75), Value::scalar("new", 1.0)],
    )])
    .unwrap();
    // the writer still appends to its own file after the rewrite
    w.scalars(3, &[("eval/acc".into(), 1.0)]).unwrap();
    let mut got: Vec<(i64, String, ValueData)> = read_dir(dir.path())
        .unwrap()
        .into_iter()
        .flat_map(|f| f.events)
        .filter_map(|e| match e.what {
            What::Summary(vs) => Some(vs.into_iter().map(move |v| (e.step, v.tag, v.data))),
            _ => None,
        })
        .flatten()
        .collect();
    got.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let s = |x: f32| ValueData::Simple(x);
    assert_eq!(
        got,
        [
            (1, "eval/acc".into(), s(0.75)),
            (1, "new".into(), s(1.0)),
            (1, "other".into(), s(7.0)),
            (2, "eval/acc".into(), s(0.5)),
            (3, "eval/acc".into(), s(1.0)),
        ]
    );
}

#[test]
fn a_writer_retaining_its_folder_keeps_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    w.scalars(5, &[("train/loss".into(), 1.0)]).unwrap();
    let r = w.retain(|e| e.step < 5).unwrap();
    assert_eq!((r.dropped, r.removed), (1, 0));
    w.scalars(5, &[("train/loss".into(), 2.0)]).unwrap();
    let files = read_dir(dir.path()).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(steps(&files), [5]);
    assert_eq!(
        files[0].events.last().unwrap().what,
        What::Summary(vec![Value::scalar("train/loss", 2.0)])
    );
}
