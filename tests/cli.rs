//! The command line as a user meets it: the version, flags that would be ignored, and
//! enumerated options that list their values. None of these calls gets as far as loading a model.

use std::process::{Command, Output};

fn east(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_east"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_prints_the_crate_version() {
    let o = east(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("east {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn lora_only_flags_without_lora_are_errors() {
    let base = [
        "train",
        "--model",
        "no-such-model",
        "--data",
        "no.jsonl",
        "--out",
        "no-such-dir",
    ];
    for extra in [
        &["--lora-rank", "8"][..],
        &["--lora-alpha", "32"],
        &["--lora-dropout", "0.1"],
        &["--lora-targets", "q_proj"],
        &["--merge"],
    ] {
        let o = east(&[&base[..], extra].concat());
        assert!(!o.status.success(), "{extra:?} was accepted");
        let e = stderr(&o);
        assert!(
            e.contains(extra[0]) && e.contains("add --lora"),
            "{extra:?}: {e}"
        );
    }
    assert!(
        !std::path::Path::new("no-such-dir").exists(),
        "nothing is written"
    );
}

#[test]
fn cluster_split_needs_a_dataset() {
    let o = east(&[
        "cluster",
        "--samples",
        "s.jsonl",
        "--out",
        "c.jsonl",
        "--split",
        "test",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--dataset"), "{}", stderr(&o));
}

#[test]
fn enumerated_options_name_their_values() {
    let o = east(&[
        "train",
        "--data",
        "d.jsonl",
        "--out",
        "o",
        "--schedule",
        "exponential",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("exponential")
            && e.contains("linear")
            && e.contains("cosine")
            && e.contains("constant"),
        "{e}"
    );
    let o = east(&["sample", "--out", "s.jsonl", "--device", "gpu"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cpu, cuda or cuda:N"), "{}", stderr(&o));
    let o = east(&[
        "weight",
        "--clusters",
        "c",
        "--samples",
        "s",
        "--out",
        "t",
        "--metric",
        "variance",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("entropy"), "{}", stderr(&o));
}

#[test]
fn help_shows_defaults_and_values() {
    let o = east(&["sample", "--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    // the paper's sampling settings, as Config::default() holds them
    assert!(
        help.contains("Completions per question [default: 128]"),
        "{help}"
    );
    assert!(help.contains("[default: 0.7]"), "{help}");
    let o = east(&["weight", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("power") && help.contains("linear") && help.contains("[default: entropy]"),
        "{help}"
    );
}

/// `--approximate` reaches the grader: a rounded decimal is wrong by default and right within
/// the given tolerance (2/3 = 0.66666…, 0.6667 is 5e-5 off relatively).
#[test]
fn cluster_approximate_accepts_rounded_decimals_within_the_tolerance() {
    let d = tempfile::tempdir().unwrap();
    let samples = d.path().join("samples.jsonl");
    let row = r#"{"id":"q","question":"?","answer":"\\frac{2}{3}","completions":["so \\boxed{0.6667}","\\boxed{\\frac{4}{6}}"]}"#;
    std::fs::write(&samples, format!("{row}\n")).unwrap();
    let correct = |extra: &[&str]| -> Vec<bool> {
        let out = d.path().join("clusters.jsonl");
        let o = east(
            &[
                &[
                    "cluster",
                    "--samples",
                    samples.to_str().unwrap(),
                    "--out",
                    out.to_str().unwrap(),
                ][..],
                extra,
            ]
            .concat(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
        serde_json::from_value(v["correct"].clone()).unwrap()
    };
    assert_eq!(correct(&[]), [false, true]);
    assert_eq!(correct(&["--approximate", "1e-4"]), [true, true]);
    assert_eq!(correct(&["--approximate", "1e-5"]), [false, true]);
    let o = east(&[
        "cluster",
        "--samples",
        "s",
        "--out",
        "c",
        "--approximate",
        "2",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("cluster.approximate"),
        "{}",
        stderr(&o)
    );
}

/// The configs are compiled in: a bare name works from any folder, and `--list` names them.
#[test]
fn bundled_configs_load_by_name_from_anywhere() {
    let d = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_east"))
            .args(args)
            .current_dir(d.path())
            .output()
            .unwrap()
    };
    let o = run(&["config", "--list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list = String::from_utf8_lossy(&o.stdout);
    for name in ["demo", "gsm8k_1b", "gsm8k_8b", "math_1b", "math_8b"] {
        assert!(
            list.lines()
                .any(|l| l.starts_with(name) && l.len() > name.len() + 10),
            "{name}: {list}"
        );
    }
    let want = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/gsm8k_1b.toml"
    ))
    .unwrap();
    let want: toml::Table = toml::from_str(&want).unwrap();
    let name = want["run"]["name"].as_str().unwrap();
    for spelling in ["gsm8k_1b.toml", "gsm8k_1b"] {
        let o = run(&["config", "--config", spelling, "--get", "run.name"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), name);
    }
    let o = run(&["run", "--config", "gsm8k_3b.toml"]);
    assert!(
        !o.status.success() && stderr(&o).contains("gsm8k_3b.toml"),
        "{}",
        stderr(&o)
    );
}

/// `config --get` of a key that exists but is unset (an optional key at its default) prints
/// nothing and says so; only a key that does not exist is an error. `run.name` may not leave
/// `run.dir` (`..`, `.`) or be the samples cache.
#[test]
fn config_get_of_unset_keys_and_run_names_that_leave_run_dir() {
    let get = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_east"))
            .args(["config"])
            .args(args)
            .output()
            .unwrap()
    };
    let o = get(&["--get", "data.limit"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "");
    assert!(
        stderr(&o).contains("data.limit is not set"),
        "{}",
        stderr(&o)
    );
    let o = get(&["--set", "data.limit=5", "--get", "data.limit"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "5");
    let o = get(&["--get", "data.limits"]);
    assert!(
        !o.status.success() && stderr(&o).contains("no config key `data.limits`"),
        "{}",
        stderr(&o)
    );
    for name in ["..", ".", "_samples"] {
        let o = get(&[
            "--set",
            &format!("run.name=\"{name}\""),
            "--get",
            "run.name",
        ]);
        assert!(
            !o.status.success() && stderr(&o).contains("run.name"),
            "{name}: {}",
            stderr(&o)
        );
    }
}

/// The stage's flags and the file are validated as one config: a flag can mend one side of a
/// cross-key rule that the file alone breaks, and an error still names the file.
#[test]
fn flags_are_validated_together_with_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("keep.toml");
    // keep_all_correct contradicts the default question set ("authors")
    std::fs::write(&cfg, "[weight]\nkeep_all_correct = true\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let missing = missing.to_str().unwrap();
    let out = dir.path().join("train.jsonl");
    let base = [
        "weight",
        "--config",
        cfg,
        "--clusters",
        missing,
        "--samples",
        missing,
        "--out",
        out.to_str().unwrap(),
    ];

    let o = east(&base);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(cfg) && e.contains("weight.keep_all_correct"),
        "{e}"
    );

    // --questions answered makes the file's value meaningful: the command goes on to read its
    // (missing) clusters file instead of refusing the config.
    let o = east(&[&base[..], &["--questions", "answered"]].concat());
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(!e.contains("weight.keep_all_correct"), "{e}");
    assert!(e.contains("missing.jsonl"), "{e}");
}
