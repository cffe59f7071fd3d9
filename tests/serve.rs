//! The openai backend against a real engine: llama.cpp's `llama-server` (built by
//! `scripts/install-llama-server.sh` into `.tools/llama-server/`, or `EAST_LLAMA_SERVER`)
//! serving the bundled SmolLM2 GGUF on 127.0.0.1. A missing server FAILS these tests: CI
//! installs it (`scripts/test.sh`). Plus the response parser on answers in vLLM's format.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn model() -> PathBuf {
    east::model::gguf::bundled_smollm2_path()
}

fn llama_server() -> PathBuf {
    let path = std::env::var_os("EAST_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/llama-server/llama-server")
        });
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-llama-server.sh (scripts/test.sh does) or set EAST_LLAMA_SERVER",
        path.display()
    );
    path
}

/// A llama-server on a free port; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(model: &Path) -> Server {
        let port = east::serve::launch::free_port().unwrap();
        let child = Command::new(llama_server())
            .args([
                "-m",
                model.to_str().unwrap(),
                "--host",
                "127.0.0.1",
                "--port",
            ])
            .arg(port.to_string())
            .args(["-c", "2048", "-np", "2", "-t", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/v1");
        let started = Instant::now();
        while ureq::get(&format!("{url}/models")).call().is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "llama-server did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn east(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_east"))
        .args(args)
        .output()
        .expect("east runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
        .collect()
}

fn sample_args<'a>(url: &'a str, out: &'a str, limit: &'a str) -> Vec<&'a str> {
    let m = Box::leak(model().display().to_string().into_boxed_str());
    vec![
        "sample",
        "--backend",
        "openai",
        "--url",
        url,
        "--model",
        m,
        "--dataset",
        "gsm8k",
        "--limit",
        limit,
        "--n",
        "4",
        "--max-new-tokens",
        "8",
        "--out",
        out,
        "--set",
        "server.retries=1",
        "--set",
        "server.concurrency=2",
    ]
}

#[test]
fn sampling_through_llama_server_survives_its_death_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples.jsonl");
    let out_s = out.to_str().unwrap();
    let server = Server::start(&model());
    let mut child = Command::new(env!("CARGO_BIN_EXE_east"))
        .args(sample_args(&server.url, out_s, "3"))
        .args(["--set", "server.concurrency=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // kill the server once the first question is written
    let started = Instant::now();
    while std::fs::read_to_string(&out).map_or(0, |t| t.lines().count()) < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no question sampled"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("east sample ended early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = server.url.clone();
    drop(server);
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        !result.status.success(),
        "east sample went on without its server"
    );
    assert!(
        stderr.contains(&url) && stderr.contains("did not answer"),
        "{stderr}"
    );
    let before = lines(&out);
    assert!(
        !before.is_empty() && before.len() < 3,
        "{} questions",
        before.len()
    );
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("samples.meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["complete"], false);
    assert_eq!(meta["settings"]["backend"], "openai");
    assert_eq!(meta["server"]["urls"][0], url.as_str());

    // a new server (another port: a server may move), the same command resumes
    let server = Server::start(&model());
    let (ok, log) = east(&sample_args(&server.url, out_s, "3"));
    assert!(ok, "{log}");
    let after = lines(&out);
    assert_eq!(after.len(), 3);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "finished questions are kept as they were"
    );
    let ids: std::collections::HashSet<&str> =
        after.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "no question twice");
    for (i, r) in after.iter().enumerate() {
        assert_eq!(r["id"], format!("gsm8k/train/{i}"), "question order");
        assert_eq!(r["completions"].as_array().unwrap().len(), 4);
        for (t, f) in r["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .zip(r["finish"].as_array().unwrap())
        {
            let t = t.as_u64().unwrap();
            assert!(
                t <= 9,
                "{t} tokens from max_tokens 8 (east's tokenizer may split one more)"
            );
            assert!(f == "stop" || f == "length");
        }
    }
    // the four completions of a question are four samples, not one repeated
    let distinct: std::collections::HashSet<&str> = after[0]["completions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(distinct.len() > 1, "{:?}", after[0]["completions"]);
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("samples.meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["complete"], true);
    assert_eq!(meta["server"]["model"], meta["settings"]["served_model"]);

    // resuming with another served model or backend is refused, the file untouched
    let mut other = sample_args(&server.url, out_s, "3");
    other.extend(["--server-model", "another-model"]);
    let (ok, log) = east(&other);
    assert!(!ok && log.contains("another-model"), "{log}");
    let m = model().display().to_string();
    let (ok, log) = east(&[
        "sample",
        "--model",
        &m,
        "--dataset",
        "gsm8k",
        "--limit",
        "3",
        "--n",
        "4",
        "--max-new-tokens",
        "8",
        "--out",
        out_s,
    ]);
    assert!(!ok && log.contains("backend openai"), "{log}");
    assert_eq!(lines(&out), after);
}

#[test]
fn eval_through_llama_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&model());
    let out = dir.path().join("eval");
    let m = model().display().to_string();
    let (ok, log) = east(&[
        "eval",
        "--backend",
        "openai",
        "--url",
        &server.url,
        "--model",
        &m,
        "--dataset",
        "gsm8k",
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["n"], 2);
    assert_eq!(report["settings"]["backend"], "openai");
    let preds = lines(&out.join("predictions.jsonl"));
    assert_eq!(preds.len(), 2);
    // greedy: the same request twice gives the same completion
    let (ok, log) = east(&[
        "eval",
        "--backend",
        "openai",
        "--url",
        &server.url,
        "--model",
        &m,
        "--dataset",
        "gsm8k",
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
        "--out",
        dir.path().join("again").to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    let again = lines(&dir.path().join("again/predictions.jsonl"));
    let by_id = |v: &[Value]| {
        let mut m: Vec<(String, String)> = v
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_string(),
                    p["completion"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        m.sort();
        m
    };
    assert_eq!(by_id(&preds), by_id(&again));
    // a server flag without the openai backend would be ignored: an error
    let (ok, log) = east(&[
        "eval",
        "--url",
        &server.url,
        "--model",
        &m,
        "--dataset",
        "gsm8k",
        "--limit",
        "2",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!ok && log.contains("--backend openai"), "{log}");
}

/// The bundled model exported to an f32 GGUF loads back in east with the same logits, and
/// llama.cpp's server, reading it, answers greedily what east's own decoder answers.
#[test]
fn gguf_export_round_trips_and_llama_server_reads_it() {
    use candle_core::{DType, Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("model.gguf");
    let lm = east::model::load(model().to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    east::serve::gguf_export::write_gguf(
        &model(),
        &lm.config,
        &lm.model.named_tensors(),
        &exported,
    )
    .unwrap();
    let back = east::model::load(exported.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap();
    let ids = lm.east_prompt_ids("What is 12 times 7?").unwrap();
    let logits = |m: &east::model::LoadedModel| {
        let mut cache = east::model::KvCache::new(
            &m.config,
            1,
            ids.len() + 1,
            vec![0],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let x = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        m.model
            .forward_step(&x, &mut cache)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (logits(&lm), logits(&back));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff == 0.0, "logits differ by {diff}");

    let server = Server::start(&exported);
    let m = exported.display().to_string();
    // ASCII questions: GSM8K test/0 ("Janet’s ducks") came out differently after two tokens,
    // a near tie or a tokenizer difference on "’" that this test is not about
    let data = dir.path().join("q.jsonl");
    std::fs::write(
        &data,
        "{\"question\": \"What is 12 times 7?\", \"answer\": \"84\"}\n{\"question\": \"Tom has 3 apples and buys 5 more. How many apples does he have?\", \"answer\": \"8\"}\n",
    )
    .unwrap();
    let data = data.to_str().unwrap();
    let (ok, log) = east(&[
        "eval",
        "--backend",
        "openai",
        "--url",
        &server.url,
        "--model",
        &m,
        "--dataset",
        data,
        "--max-new-tokens",
        "8",
        "--out",
        dir.path().join("served").to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    let (ok, log) = east(&[
        "eval",
        "--model",
        &m,
        "--dataset",
        data,
        "--max-new-tokens",
        "8",
        "--out",
        dir.path().join("native").to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    let texts = |d: &str| {
        let mut v: Vec<(String, String)> = lines(&dir.path().join(d).join("predictions.jsonl"))
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_string(),
                    p["completion"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        texts("served"),
        texts("native"),
        "llama.cpp and east read the export alike"
    );
}

/// vLLM's and SGLang's answers to n > 1 (completions and chat, choices out of index order,
/// `stop_reason` / `matched_stop`, `usage`, fields east does not read) and their error bodies,
/// and a real llama.cpp server answer. The vLLM and SGLang fixtures are written from the
/// engines' response models at the commits named in tests/fixtures/serve/SOURCES.md (none of
/// them runs on these machines); the llama.cpp one was recorded.
#[test]
fn vllm_sglang_and_llama_server_answers_parse() {
    let fixture = |name: &str| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/serve")
                .join(name),
        )
        .unwrap()
    };
    use east::schema::Finish;
    use east::serve::response::{error_message, parse_choices};
    let texts =
        |c: &[east::serve::response::Choice]| c.iter().map(|c| c.text.clone()).collect::<Vec<_>>();
    let c = parse_choices(&fixture("vllm_completions_n4.json"), false).unwrap();
    assert_eq!(c.len(), 4);
    // choices come back out of order; index decides the sample
    assert_eq!(c[1].text, "She sold 48 + 24 = \\boxed{72} clips.");
    assert_eq!(
        c.iter().map(|c| c.finish).collect::<Vec<_>>(),
        [Finish::Stop, Finish::Stop, Finish::Length, Finish::Stop]
    );
    let c = parse_choices(&fixture("vllm_chat_n2.json"), true).unwrap();
    assert_eq!(c[0].text, "2 + 3 = \\boxed{5}");
    assert_eq!(c[1].finish, Finish::Length);
    for f in ["vllm_error_400.json", "vllm_error_400_nested.json"] {
        assert!(error_message(&fixture(f)).starts_with("This model's maximum context length"));
    }
    let c = parse_choices(&fixture("sglang_completions_n3.json"), false).unwrap();
    assert_eq!(
        texts(&c),
        [
            "48 + 24 = 72\n\nThe answer is \\boxed{72}.",
            "Half of 48 is 24, so 48 + 24 = \\boxed{72}.",
            "She sold 48 clips in April and"
        ]
    );
    assert_eq!(
        c.iter().map(|c| c.finish).collect::<Vec<_>>(),
        [Finish::Stop, Finish::Stop, Finish::Length]
    );
    assert_eq!(
        parse_choices(&fixture("sglang_completions_n3_token_ids.json"), false).unwrap(),
        c
    );
    let c = parse_choices(&fixture("llama_server_completions_n3.json"), false).unwrap();
    assert_eq!(
        texts(&c),
        [
            "2 + 3 = 5",
            "1.2\n\nThis is a",
            "A simple, yet often misunderstood number."
        ]
    );
    assert_eq!(
        c.iter().map(|c| c.finish).collect::<Vec<_>>(),
        [Finish::Stop, Finish::Length, Finish::Length]
    );
}

/// Sampling and evaluating through a server load only the tokenizer, config and chat template
/// (`load_model_text`), not the weights: the prompts sent are byte-identical to those the
/// native decoder tokenizes from the fully loaded model (text and ids), for the bundled GGUF and
/// for a model folder with its own chat template; a folder without weights still renders them.
#[test]
fn server_prompts_need_no_weights_and_are_the_native_ones() {
    use east::model::{load_model, load_model_text, ModelConfig};
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny");
    east::model::testing::write_tiny_model(&folder, 3).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/chat_templates/HuggingFaceTB-SmolLM2-135M-Instruct.jinja"),
        folder.join("chat_template.jinja"),
    )
    .unwrap();
    let questions = [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "Ünïcödé: 3 × 4 = ? — answer in \\boxed{}.\n\nSecond line.",
    ];
    for spec in [model(), folder.clone()] {
        let cfg = ModelConfig {
            path: spec.display().to_string(),
            ..ModelConfig::default()
        };
        let full = load_model(&cfg).unwrap();
        let text = load_model_text(&cfg).unwrap();
        for q in questions {
            assert_eq!(
                text.east_prompt_text(q).unwrap(),
                full.east_prompt_text(q).unwrap()
            );
            assert_eq!(
                text.east_prompt_ids(q).unwrap(),
                full.east_prompt_ids(q).unwrap()
            );
        }
        assert_eq!(text.eos_ids, full.eos_ids);
        assert_eq!(text.config, full.config);
        assert_eq!(text.spec, full.spec);
    }
    std::fs::remove_file(folder.join("model.safetensors")).unwrap();
    let cfg = ModelConfig {
        path: folder.display().to_string(),
        ..ModelConfig::default()
    };
    assert!(load_model(&cfg).is_err());
    let text = load_model_text(&cfg).unwrap();
    assert!(text
        .east_prompt_text(questions[0])
        .unwrap()
        .contains("<|im_start|>assistant"));
}

/// Questions a small model answers with the number asked for, now and then: the weighted
/// training set of every round is non-empty.
fn write_number_questions(path: &Path) {
    let rows: Vec<String> = [7, 4, 9]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            serde_json::json!({"id": format!("q{i}"), "question": format!("Reply with only the number {n}."), "answer": n.to_string()})
                .to_string()
        })
        .collect();
    std::fs::write(path, rows.join("\n") + "\n").unwrap();
}

fn run_config(dir: &Path, launch: Option<&str>, rounds: usize) -> PathBuf {
    let data = dir.join("numbers.jsonl");
    write_number_questions(&data);
    let server = match launch {
        Some(l) => format!("[server]\nlaunch = {:?}\ncheckpoint_format = \"gguf\"\nretries = 1\nstartup_timeout_s = 120.0\n", l),
        None => "[server]\nurl = \"http://127.0.0.1:9/v1\"\n".into(),
    };
    let text = format!(
        r#"
[model]
path = "{model}"
dtype = "f32"
[data]
dataset = "{data}"
fields.id = "id"
[sample]
backend = "openai"
n = 4
temperature = 0.7
max_new_tokens = 12
[weight]
metric = "uniform"
require_boxed = false
[train]
epochs = 1
batch_size = 2
micro_batch_size = 1
lr = 1e-5
max_length = 128
[eval]
backend = "openai"
datasets = ["{data}"]
limit = 2
max_new_tokens = 8
[run]
name = "served"
dir = "{dir}"
rounds = {rounds}
{server}"#,
        model = model().display(),
        data = data.display(),
        dir = dir.display(),
    );
    let path = dir.join("served.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_run_without_launch_refuses_later_rounds_and_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = run_config(dir.path(), None, 2);
    let (ok, log) = east(&["run", "--config", config.to_str().unwrap()]);
    assert!(!ok && log.contains("set server.launch"), "{log}");
}

/// Two rounds of `east run` with llama.cpp's server launched per model: the base GGUF, then
/// each round's checkpoint exported to GGUF. Every server is stopped, none outlives east.
#[test]
fn east_run_launches_llama_server_for_every_round() {
    let dir = tempfile::tempdir().unwrap();
    let launch = format!(
        "{} -m {{model}} --host 127.0.0.1 --port {{port}} --seed {{seed}} -c 2048 -np 2 -t 2",
        llama_server().display()
    );
    let config = run_config(dir.path(), Some(&launch), 2);
    let (ok, log) = east(&["run", "--config", config.to_str().unwrap()]);
    assert!(ok, "{log}");
    let root = dir.path().join("served");
    let events: Vec<Value> = lines(&root.join("run_log.jsonl"));
    let starts: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "server_start")
        .collect();
    let rounds: Vec<u64> = starts
        .iter()
        .map(|e| e["round"].as_u64().unwrap())
        .collect();
    assert_eq!(
        rounds,
        [0, 1, 2],
        "one server per model: base, round 1's, round 2's"
    );
    for s in &starts {
        let pid = s["pid"].as_u64().unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "server {pid} outlived east run"
        );
    }
    for r in 0..=2 {
        assert!(
            root.join(format!("round{r}/server.log")).is_file(),
            "round{r}/server.log"
        );
    }
    assert!(starts[1]["command"]
        .as_str()
        .unwrap()
        .contains("round1/model.gguf"));
    // round 2 sampled from round 1's exported model
    let meta: Value = {
        let samples = std::fs::canonicalize(root.join("round2/samples.jsonl")).unwrap();
        let meta = samples.with_file_name(format!(
            "{}.meta.json",
            samples.file_stem().unwrap().to_string_lossy()
        ));
        serde_json::from_str(&std::fs::read_to_string(meta).unwrap()).unwrap()
    };
    assert!(
        meta["settings"]["served_model"]
            .as_str()
            .unwrap()
            .contains("round1/model.gguf"),
        "{meta}"
    );
    assert_eq!(meta["complete"], true);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.as_array().unwrap().len(), 3);
    // a rerun finds everything done and starts no server
    let (ok, log) = east(&["run", "--config", config.to_str().unwrap()]);
    assert!(ok, "{log}");
    let again = lines(&root.join("run_log.jsonl"));
    assert_eq!(
        again
            .iter()
            .filter(|e| e["event"] == "server_start")
            .count(),
        3,
        "a finished run starts no server"
    );
}

/// Ctrl-C during a round: east stops the server it launched before it exits.
#[test]
fn ctrl_c_leaves_no_server_behind() {
    let dir = tempfile::tempdir().unwrap();
    let launch = format!(
        "{} -m {{model}} --host 127.0.0.1 --port {{port}} -c 2048 -np 2 -t 2",
        llama_server().display()
    );
    let config = run_config(dir.path(), Some(&launch), 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_east"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_log = dir.path().join("served/run_log.jsonl");
    let started = Instant::now();
    let pid = loop {
        let found = std::fs::read_to_string(&run_log).ok().and_then(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|e| e["event"] == "server_start")
                .and_then(|e| e["pid"].as_u64())
        });
        if let Some(pid) = found {
            break pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no server started"
        );
        assert!(child.try_wait().unwrap().is_none(), "east run ended early");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // SAFETY: signalling the east process this test started
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert!(!status.success());
    // the server was east's child: once east is gone it is reaped by init or gone
    let gone = Instant::now();
    while Path::new(&format!("/proc/{pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "server {pid} outlived Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
