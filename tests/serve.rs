//! The openai backend against a real engine: llama.cpp's `llama-server` (built by
//! `scripts/install-llama-server.sh` into `.tools/llama-server/`, or `EAST_LLAMA_SERVER`)
//! serving the bundled SmolLM2 GGUF on 127.0.0.1. A missing server FAILS these tests: CI
//! installs it (`scripts/test.sh`). Plus the response parser on answers in vLLM's format.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/llama_server.rs"]
mod llama_server;
use llama_server::LlamaServer;

fn model() -> PathBuf {
    east::model::gguf::bundled_smollm2_path()
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
    let server = LlamaServer::start(&model(), 2048, 2);
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
    let server = LlamaServer::start(&model(), 2048, 2);
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
    let server = LlamaServer::start(&model(), 2048, 2);
    let out = dir.path().join("eval");
    let m = model().display().to_string();
    let (ok, log) = eval_via(&server.url, &m, "gsm8k", &out, &["--limit", "2"]);
    assert!(ok, "{log}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["n"], 2);
    assert_eq!(report["settings"]["backend"], "openai");
    let preds = lines(&out.join("predictions.jsonl"));
    assert_eq!(preds.len(), 2);
    // greedy: the same request twice gives the same completion
    let again_dir = dir.path().join("again");
    let (ok, log) = eval_via(&server.url, &m, "gsm8k", &again_dir, &["--limit", "2"]);
    assert!(ok, "{log}");
    let again = lines(&again_dir.join("predictions.jsonl"));
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

    let server = LlamaServer::start(&exported, 2048, 2);
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
    let (ok, log) = eval_via(&server.url, &m, data, &dir.path().join("served"), &[]);
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

/// `server.launch` for the test's llama-server, with `args` added.
fn llama_launch(args: &str) -> String {
    format!(
        "{} -m {{model}} --host 127.0.0.1 --port {{port}} {args} -c 2048 -np 2 -t 2",
        llama_server::binary().display()
    )
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
    let launch = llama_launch("--seed {seed}");
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

/// Starts a one-round `east run` in `dir` with `launch` and waits until it has started its
/// server; returns east's process and the `server_start` event of run_log.jsonl.
fn run_until_a_server_starts(dir: &Path, launch: &str) -> (Child, Value) {
    let config = run_config(dir, Some(launch), 1);
    let mut child = Command::new(env!("CARGO_BIN_EXE_east"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run_log = dir.join("served/run_log.jsonl");
    let started = Instant::now();
    loop {
        let found = std::fs::read_to_string(&run_log).ok().and_then(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|e| e["event"] == "server_start")
        });
        if let Some(e) = found {
            return (child, e);
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no server started"
        );
        assert!(child.try_wait().unwrap().is_none(), "east run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ctrl-C during a round: east stops the server it launched before it exits.
#[test]
fn ctrl_c_leaves_no_server_behind() {
    let dir = tempfile::tempdir().unwrap();
    let launch = llama_launch("");
    let (mut child, start) = run_until_a_server_starts(dir.path(), &launch);
    let pid = start["pid"].as_u64().unwrap();
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

// ---------------------------------------------------------------------------------------------
// Faults llama.cpp's server does not produce, against a server inside the test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One answer of a [`FakeServer`]: status, extra headers, body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(body: impl Into<String>) -> Reply {
        Reply::status(200, body)
    }
    fn status(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A completions answer with `n` choices of `text`.
fn completions(n: usize, text: &str) -> String {
    let choices: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"index": i, "text": text, "finish_reason": "stop"}))
        .collect();
    serde_json::json!({ "choices": choices }).to_string()
}

/// One request a [`FakeServer`] received.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    body: Value,
    at: Instant,
}

/// An OpenAI-compatible server on 127.0.0.1 that answers `GET /v1/models` with one model and
/// every other request with `answer(k, request)` (k counts the completions requests from 0).
/// Every connection is closed after its answer.
struct FakeServer {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl FakeServer {
    fn start(answer: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt, answer) = (Arc::clone(&requests), Arc::clone(&stop), Arc::new(answer));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (log, answer) = (Arc::clone(&log), Arc::clone(&answer));
                std::thread::spawn(move || serve_one(stream, &log, &*answer));
            }
        });
        FakeServer {
            url: format!("http://127.0.0.1:{port}/v1"),
            requests,
            stop,
            port,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
    }
}

fn serve_one(
    stream: TcpStream,
    log: &Mutex<Vec<Request>>,
    answer: &(dyn Fn(usize, &Request) -> Reply + Send + Sync),
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let reply = if path.ends_with("/models") {
        Reply::json(r#"{"object":"list","data":[{"id":"fake","object":"model"}]}"#)
    } else {
        let request = Request {
            path,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            at: Instant::now(),
        };
        let k = {
            let mut log = log.lock().unwrap();
            log.push(request.clone());
            log.len() - 1
        };
        answer(k, &request)
    };
    let mut out = stream;
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(reply.body.as_bytes());
}

/// A URL where nothing listens.
fn dead_url() -> String {
    format!(
        "http://127.0.0.1:{}/v1",
        east::serve::launch::free_port().unwrap()
    )
}

fn client(urls: &[&str], settings: &str) -> Result<east::serve::Client, anyhow::Error> {
    let cfg: east::serve::ServerConfig = toml::from_str(settings).unwrap();
    let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
    east::serve::Client::connect(&cfg, &urls)
}

fn params() -> east::serve::GenParams {
    east::serve::GenParams {
        temperature: 0.7,
        top_p: 1.0,
        max_tokens: 16,
        stop: Vec::new(),
    }
}

fn text(s: &str) -> east::serve::Prompt {
    east::serve::Prompt::Text(s.into())
}

/// The error of a request of `n` completions that must fail.
fn failure(c: &east::serve::Client, n: usize) -> String {
    c.complete(&text("q"), n, 1, &params())
        .unwrap_err()
        .to_string()
}

/// One dead URL beside a live one: the dead one is taken out of rotation after its first
/// failures and every request is answered (before, every retry went to the dead server, which
/// always had the fewest requests in flight, and the run failed after a few questions). Only
/// when every URL fails does a request fail, naming each URL and its error.
#[test]
fn a_dead_url_is_taken_out_of_rotation() {
    let live = FakeServer::start(|_, r| {
        Reply::json(completions(
            r.body["n"].as_u64().unwrap() as usize,
            "\\boxed{7}",
        ))
    });
    let dead = dead_url();
    let c = client(&[&dead, &live.url], "retries = 1").unwrap();
    assert_eq!(c.model, "fake", "/models answered by the live URL");
    std::thread::scope(|s| {
        for w in 0..8 {
            let c = &c;
            s.spawn(move || {
                for k in 0..10 {
                    let got = c
                        .complete(&text(&format!("q{w}.{k}")), 4, 1, &params())
                        .unwrap();
                    assert_eq!(got.len(), 4);
                }
            });
        }
    });
    let answered = live.requests();
    assert_eq!(
        answered.len(),
        80,
        "every request answered by the live server"
    );
    assert!(answered.iter().all(|r| r.path == "/v1/completions"));

    let c = client(&[&dead, &live.url], "retries = 1\nmodel = \"fake\"").unwrap();
    drop(live);
    let e = failure(&c, 1);
    assert!(e.contains("did not answer") && e.contains(&dead), "{e}");
    assert!(
        e.matches("http://127.0.0.1").count() >= 2,
        "each URL named: {e}"
    );
}

/// `Retry-After` (seconds) is waited out instead of the backoff (0.25–0.75 s for a first retry).
#[test]
fn retry_after_is_honoured() {
    let server = FakeServer::start(|k, _| match k {
        0 => Reply::status(429, r#"{"error":{"message":"slow down"}}"#).header("Retry-After", "2"),
        _ => Reply::json(completions(1, "ok")),
    });
    let c = client(&[&server.url], "retries = 1\nmodel = \"fake\"").unwrap();
    assert_eq!(
        c.complete(&text("q"), 1, 1, &params()).unwrap()[0].text,
        "ok"
    );
    let r = server.requests();
    let waited = r[1].at.duration_since(r[0].at).as_secs_f64();
    assert!(waited >= 1.95, "retried after {waited} s");
}

/// A redirect is an error showing its status and Location (ureq would resend a POST as a GET
/// or hand back an empty body), not retried.
#[test]
fn a_redirect_shows_its_status_and_location() {
    let server = FakeServer::start(|_, _| {
        Reply::status(307, "").header("Location", "https://gateway.example/v1/completions")
    });
    let c = client(&[&server.url], "retries = 3\nmodel = \"fake\"").unwrap();
    let e = failure(&c, 1);
    assert!(
        e.contains("HTTP 307") && e.contains("https://gateway.example/v1/completions"),
        "{e}"
    );
    assert_eq!(server.requests().len(), 1, "not retried");
}

/// An answer over 10 MB (ureq's own string limit, which made it "did not answer" and retried)
/// is read; one over `server.max_response_mb` is an error naming `server.n_per_request`,
/// not retried.
#[test]
fn large_answers_are_read_up_to_the_setting() {
    let long = "7 ".repeat(3_000_000); // 6 MB per completion, 12 MB for two
    let server = FakeServer::start(move |_, r| {
        Reply::json(completions(r.body["n"].as_u64().unwrap() as usize, &long))
    });
    let c = client(&[&server.url], "retries = 3\nmodel = \"fake\"").unwrap();
    let got = c.complete(&text("q"), 2, 1, &params()).unwrap();
    assert_eq!(got[1].text.len(), 6_000_000);
    let c = client(
        &[&server.url],
        "retries = 3\nmodel = \"fake\"\nmax_response_mb = 10",
    )
    .unwrap();
    let e = failure(&c, 2);
    assert!(
        e.contains("server.n_per_request") && e.contains("max_response_mb = 10"),
        "{e}"
    );
    assert_eq!(
        server.requests().len(),
        2,
        "the large answer was not asked for again"
    );
}

/// `east eval --backend openai` of `model` on `dataset` through `url` into `out` (8 new tokens,
/// unless `extra` says otherwise).
fn eval_via(url: &str, model: &str, dataset: &str, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "eval",
        "--backend",
        "openai",
        "--url",
        url,
        "--model",
        model,
    ];
    args.extend(["--dataset", dataset, "--max-new-tokens", "8"]);
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    east(&args)
}

/// `east sample` through the test's server, with `args` added.
fn sample_via(url: &str, out: &Path, args: &[&str]) -> (bool, String) {
    let mut all = sample_args(url, out.to_str().unwrap(), "2");
    all.extend_from_slice(args);
    east(&all)
}

/// A server that refuses n > 1: the fallback to one completion per request is said on stderr
/// even when stderr is not a terminal (it was drawn with the progress bar only).
#[test]
fn the_n_per_request_fallback_is_said_without_a_terminal() {
    let server = FakeServer::start(|_, r| match r.body["n"].as_u64() {
        Some(1) => Reply::json(completions(1, "\\boxed{7}")),
        _ => Reply::status(
            400,
            r#"{"error":{"code":400,"message":"Only one completion choice is allowed","type":"invalid_request_error"}}"#,
        ),
    });
    let dir = tempfile::tempdir().unwrap();
    let (ok, log) = sample_via(&server.url, &dir.path().join("s.jsonl"), &[]);
    assert!(ok, "{log}");
    assert!(
        log.contains("1 completion(s) per request from now on"),
        "{log}"
    );
    assert!(
        log.contains("Only one completion choice is allowed"),
        "{log}"
    );
}

/// Durations past a day were a panic (exit 101) converting them; now an error naming the key.
#[test]
fn absurd_durations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for key in ["server.timeout_s", "server.startup_timeout_s"] {
        let (ok, log) = sample_via(
            "http://127.0.0.1:9/v1",
            &dir.path().join("s.jsonl"),
            &["--set", &format!("{key}=1e20")],
        );
        assert!(
            !ok && log.contains(key) && log.contains("at most 86400"),
            "{log}"
        );
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// A chat template that renders nothing: an empty prompt is an error on the server backend,
/// as it is on the native one, naming the question; nothing is sent.
#[test]
fn an_empty_prompt_is_an_error_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny");
    east::model::testing::write_tiny_model(&folder, 3).unwrap();
    std::fs::write(folder.join("chat_template.jinja"), "{{ '' }}").unwrap();
    let server = FakeServer::start(|_, _| Reply::json(completions(1, "x")));
    let m = folder.display().to_string();
    let args = |out: &str| {
        let base = [
            "sample",
            "--model",
            &m,
            "--dataset",
            "gsm8k",
            "--limit",
            "1",
            "--n",
            "2",
        ];
        [&base[..], &["--max-new-tokens", "4", "--out", out]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<String>>()
    };
    let served = dir.path().join("served.jsonl").display().to_string();
    let mut a = args(&served);
    a.extend(["--backend", "openai", "--url", &server.url].map(String::from));
    let (ok, log) = east(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !ok && log.contains("question `gsm8k/train/0`: empty prompt"),
        "{log}"
    );
    assert!(server.requests().is_empty());
    let native = dir.path().join("native.jsonl").display().to_string();
    let (ok, log) = east(&args(&native).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !ok && log.contains("question `gsm8k/train/0`: empty prompt"),
        "{log}"
    );
}

/// The processes of process group `group` (from /proc/PID/stat: `pid (comm) state ppid pgrp`).
fn group_members(group: u64) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.split_whitespace().nth(2) == Some(&group.to_string()))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Whether process `pid` runs (a zombie waiting for its parent does not).
fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// `kill -9` of `east run` whose launch command forks (a shell that starts a background
/// process, then the server, as vLLM's API server starts its engine): the watchdog stops the
/// whole process group — server, forked process, port — though east could do nothing.
/// `PR_SET_PDEATHSIG` alone reached only the direct child. The command also uses an
/// environment assignment, which `sh -c "exec …"` could not run.
#[test]
fn kill_9_of_east_run_leaves_no_forked_server_behind() {
    let dir = tempfile::tempdir().unwrap();
    let forked = dir.path().join("forked.pid");
    let launch = format!(
        "sleep 600 & echo $! > {}; EAST_TEST=1 {}",
        forked.display(),
        llama_launch("")
    );
    let (mut child, start) = run_until_a_server_starts(dir.path(), &launch);
    let leader = start["pid"].as_u64().unwrap();
    let forked: u64 = std::fs::read_to_string(&forked)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let port: u16 = start["url"]
        .as_str()
        .unwrap()
        .trim_end_matches("/v1")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // the group: the launch command's shell, the forked `sleep`, llama-server
    let members = group_members(leader);
    assert!(
        members.contains(&leader) && members.contains(&forked) && members.len() >= 3,
        "{members:?}"
    );
    child.kill().unwrap(); // SIGKILL: no handler runs
    child.wait().unwrap();
    let gone = Instant::now();
    while members.iter().any(|&p| running(p))
        || std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
    {
        assert!(
            gone.elapsed() < Duration::from_secs(20),
            "{:?} of the server's group {members:?} outlived kill -9 of east (port {port})",
            members.iter().filter(|&&p| running(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = std::fs::read_to_string(dir.path().join("served/round0/server.log")).unwrap();
    assert!(
        said.contains("its watchdog stops the server's process group"),
        "{said}"
    );
}

/// `n` answers `\boxed{0}`, `\boxed{1}`, … in the form the request's endpoint answers in (n = 10
/// answers each of [`write_number_questions`]' questions right once).
fn varied_answers(_: usize, r: &Request) -> Reply {
    let n = r.body["n"].as_u64().unwrap_or(1) as usize;
    let chat = r.path.ends_with("/chat/completions");
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            let text = format!("\\boxed{{{i}}}");
            if chat {
                serde_json::json!({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
            } else {
                serde_json::json!({"index": i, "text": text, "finish_reason": "stop"})
            }
        })
        .collect();
    Reply::json(serde_json::json!({ "choices": choices }).to_string())
}

/// A samples file or an evaluation made with one kind of prompt is not resumed with another:
/// `server.api` (east's text or the server's template), `model.date`, `model.prompt_style`
/// are part of the settings compared (before, a resumed file held prompts of both kinds).
#[test]
fn resuming_with_other_prompts_is_refused() {
    let server = FakeServer::start(varied_answers);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.jsonl");
    let (ok, log) = sample_via(&server.url, &out, &[]);
    assert!(ok, "{log}");
    let before = std::fs::read_to_string(&out).unwrap();
    for (set, key) in [
        ("server.api=\"chat\"", "server.api"),
        ("model.date=\"2025-01-01\"", "model.date"),
    ] {
        let (ok, log) = sample_via(&server.url, &out, &["--set", set]);
        assert!(
            !ok && log.contains("refusing to mix prompts") && log.contains(key),
            "{log}"
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), before);
    }
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["settings"]["prompt"]["api"], "completions");
    assert_eq!(meta["settings"]["prompt"]["style"], "chat");
    // the same settings: nothing to do
    let (ok, log) = sample_via(&server.url, &out, &[]);
    assert!(ok, "{log}");

    let m = model().display().to_string();
    let e = dir.path().join("eval");
    let eval = |extra: &[&str]| {
        let mut args = vec!["--limit", "1"];
        args.extend_from_slice(extra);
        eval_via(&server.url, &m, "gsm8k", &e, &args)
    };
    let (ok, log) = eval(&[]);
    assert!(ok, "{log}");
    let (ok, log) = eval(&["--set", "server.api=\"chat\""]);
    assert!(
        !ok && log.contains("prompts rendered or sent otherwise"),
        "{log}"
    );

    // east's own decoder: the date its template reports is part of the prompt too
    let tiny = dir.path().join("tiny");
    east::model::testing::write_tiny_model(&tiny, 3).unwrap();
    let native = dir.path().join("native.jsonl");
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--model",
            tiny.to_str().unwrap(),
            "--dataset",
            "gsm8k",
        ];
        args.extend(["--limit", "1", "--n", "2", "--max-new-tokens", "4"]);
        args.extend(["--out", native.to_str().unwrap()]);
        args.extend_from_slice(extra);
        east(&args)
    };
    let (ok, log) = sample(&[]);
    assert!(ok, "{log}");
    let (ok, log) = sample(&["--set", "model.date=\"2025-01-01\""]);
    assert!(!ok && log.contains("refusing to mix prompts"), "{log}");
}

/// The stage outcomes of the last `east run` in `run_log.jsonl` of the run at `root`.
fn last_outcomes(root: &Path) -> Vec<(String, String)> {
    let events = lines(&root.join("run_log.jsonl"));
    let last_start = events.iter().rposition(|e| e["event"] == "start").unwrap();
    events[last_start..]
        .iter()
        .filter(|e| e["event"] == "stage")
        .map(|e| {
            (
                e["stage"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `east run`'s samples cache key holds what decides the requests (`server.api`,
/// `server.model`) and not how they travel (`server.n_per_request`, URLs, timeouts): a changed
/// API samples again, a changed split of the requests reuses the samples. And `east run` takes
/// the locks `east train --out` and `east eval --out` take on its checkpoint and eval folders,
/// so a standalone command cannot write into them beside it.
#[test]
fn east_run_keys_samples_by_their_requests_and_locks_its_folders() {
    let server = FakeServer::start(varied_answers);
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny_model");
    east::model::testing::write_tiny_model(&tiny, 5).unwrap();
    // run_config's run of the numbers questions, on the tiny model, evaluated natively
    let config = run_config(dir.path(), None, 1);
    let (model, url) = (
        format!("model.path={:?}", tiny.display().to_string()),
        format!("server.url={:?}", server.url),
    );
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--config",
            config.to_str().unwrap(),
            "--set",
            &model,
            "--set",
            &url,
        ];
        args.extend([
            "--set",
            "sample.n=10",
            "--set",
            "eval.backend=\"native\"",
            "--set",
            "run.eval_base=false",
        ]);
        args.extend_from_slice(extra);
        east(&args)
    };
    let root = dir.path().join("served");
    let pid = format!("pid {}", std::process::id());
    for folder in ["round1/checkpoint", "round1/eval/numbers"] {
        let held = east::io::FileLock::output_dir(&root.join(folder)).unwrap();
        let (ok, log) = run(&[]);
        assert!(
            !ok && log.contains("in use by another east process") && log.contains(&pid),
            "{folder}: {log}"
        );
        drop(held);
    }
    let (ok, log) = run(&[]);
    assert!(ok, "{log}");
    // one samples file per key, each with its `.meta.json`
    let cached = || {
        std::fs::read_dir(dir.path().join("_samples"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".meta.json"))
            .count()
    };
    assert_eq!(cached(), 1);

    let (ok, log) = run(&[
        "--set",
        "server.n_per_request=2",
        "--set",
        "server.timeout_s=30",
    ]);
    assert!(ok, "{log}");
    assert!(
        last_outcomes(&root).iter().all(|(_, o)| o == "skipped"),
        "{:?}",
        last_outcomes(&root)
    );
    assert_eq!(cached(), 1);

    let (ok, log) = run(&["--set", "server.api=\"chat\""]);
    assert!(ok, "{log}");
    let outcomes = last_outcomes(&root);
    assert!(
        outcomes.contains(&("sample".into(), "ran".into())),
        "{outcomes:?}"
    );
    assert_eq!(cached(), 2);
    assert!(server
        .requests()
        .iter()
        .any(|r| r.path == "/v1/chat/completions"));
}
