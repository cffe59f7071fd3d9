//! Chat templates executed, not imitated: east's rendering of real models' templates
//! (tests/fixtures/chat_templates/, sources in SOURCES.md there) against transformers'
//! `apply_chat_template(tokenize=False)` (scripts/reference/chat_templates_reference.py), and
//! where a model's template comes from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use east::model::chat::{PinnedDate, AUTHORS_LLAMA_PROMPT};
use east::model::testing::write_tiny_model;
use east::model::{load, Chat, ChatSettings, Message, PromptStyle};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("chat_templates_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn chat_for(fx: &Value, name: &str) -> Chat {
    let source = std::fs::read_to_string(
        fixtures()
            .join("chat_templates")
            .join(format!("{name}.jinja")),
    )
    .unwrap();
    let specials: BTreeMap<String, String> =
        serde_json::from_value(fx["specials"][name].clone()).unwrap();
    let settings = ChatSettings {
        style: PromptStyle::Chat,
        date: fx["date"].as_str().unwrap().parse().unwrap(),
    };
    Chat::from_template(&source, specials, settings).unwrap()
}

fn messages(v: &Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Every template × {EAST prompt, no system message, whitespace} renders byte for byte what
/// transformers renders; the training split is TRL's where the prompt is a prefix of the
/// conversation, and an error (not a blind cut) where it is not (Mistral-Nemo drops the system
/// message unless the last message is the user's; DeepSeek-R1's generation prompt opens
/// `<think>`).
#[test]
fn templates_render_as_transformers_does() {
    let fx = reference();
    let mut checked = BTreeMap::<String, usize>::new();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let chat = chat_for(&fx, name);
        let what = format!("{name} / {}", case["case"]);
        let msgs = messages(&case["messages"]);
        if case["case"] == "training" {
            let completion = messages(&case["completion"]);
            let mut all = msgs.clone();
            all.extend(completion.clone());
            assert_eq!(
                chat.render(&all, false).unwrap(),
                case["full"].as_str().unwrap(),
                "{what}"
            );
            assert_eq!(
                chat.render(&msgs, true).unwrap(),
                case["prompt"].as_str().unwrap(),
                "{what}"
            );
            let split = chat.render_training(&msgs, &completion);
            if case["prefix"].as_bool().unwrap() {
                let (p, c) = split.unwrap();
                assert_eq!(p, case["prompt"].as_str().unwrap(), "{what}");
                assert_eq!(c, case["trl_completion"].as_str().unwrap(), "{what}");
            } else {
                let e = split.unwrap_err().to_string();
                assert!(e.contains("prefix"), "{what}: {e}");
            }
        } else {
            let got = chat.render(&msgs, true);
            match case.get("expected") {
                Some(expected) => assert_eq!(got.unwrap(), expected.as_str().unwrap(), "{what}"),
                None => assert!(
                    got.is_err(),
                    "{what}: transformers raised {}",
                    case["error"]
                ),
            }
        }
        *checked.entry(name.to_string()).or_default() += 1;
    }
    assert_eq!(checked.len(), 9, "{checked:?}");
    assert!(checked.values().all(|&n| n == 4), "{checked:?}");
}

/// `model.date` is what Llama 3.2's `strftime_now` reports (Llama 3.1's template ignores it
/// and writes its own default).
#[test]
fn model_date_pins_strftime_now() {
    let fx = reference();
    let mut chat = chat_for(&fx, "meta-llama-Llama-3.2-3B-Instruct");
    let src = chat.template().unwrap().to_string();
    let specials =
        serde_json::from_value(fx["specials"]["meta-llama-Llama-3.2-3B-Instruct"].clone()).unwrap();
    let msgs = east::model::east_messages("q");
    assert!(chat
        .render(&msgs, true)
        .unwrap()
        .contains("Today Date: 26 Jul 2024\n"));
    chat = Chat::from_template(
        &src,
        specials,
        ChatSettings {
            style: PromptStyle::Chat,
            date: "2025-03-05".parse::<PinnedDate>().unwrap(),
        },
    )
    .unwrap();
    assert!(chat
        .render(&msgs, true)
        .unwrap()
        .contains("Today Date: 05 Mar 2025\n"));
}

fn tiny_dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("m");
    write_tiny_model(&dir, 1).unwrap();
    (d, dir)
}

fn set_template(dir: &Path, template: Option<&str>) {
    let p = dir.join("tokenizer_config.json");
    let mut tc: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    match template {
        Some(t) => tc["chat_template"] = Value::from(t),
        None => {
            tc.as_object_mut().unwrap().remove("chat_template");
        }
    }
    std::fs::write(&p, serde_json::to_string(&tc).unwrap()).unwrap();
}

fn load_dir(dir: &Path) -> east::model::LoadedModel {
    load(dir.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap()
}

/// A template that merely mentions ChatML markers is executed as written (the old code
/// recognised the marker and rendered its own ChatML); `chat_template.jinja` wins over
/// tokenizer_config.json, as in transformers; without any template the built-in format of the
/// special tokens is the fallback.
#[test]
fn the_models_own_template_is_used() {
    let (_d, dir) = tiny_dir();
    set_template(&dir, Some("{# <|im_start|> #}{{ bos_token }}Q: {{ messages[-1]['content'] }}{% if add_generation_prompt %}\nA:{% endif %}"));
    let m = load_dir(&dir);
    let prompt = m.chat.east_prompt("2+2?").unwrap();
    let bos = m.tokenizer.id_to_token(m.bos_id.unwrap()).unwrap();
    // (trim_blocks drops the newline right after `{% if %}`, as jinja2 does.)
    assert_eq!(prompt, format!("{bos}Q: 2+2?A:"));

    std::fs::write(dir.join("chat_template.jinja"), "J {{ messages|length }}").unwrap();
    let m = load_dir(&dir);
    assert_eq!(m.chat.east_prompt("x").unwrap(), "J 2");
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();

    set_template(&dir, None);
    let m = load_dir(&dir);
    assert_eq!(m.chat.template(), None);
    assert_eq!(
        m.chat.builtin_format(),
        Some(east::model::ChatFormat::ChatMl)
    );
    assert!(m
        .chat
        .east_prompt("x")
        .unwrap()
        .ends_with("<|im_start|>assistant\n"));
}

/// A template that does not compile, or that raises, is an error naming the model.
#[test]
fn broken_templates_are_errors() {
    let (_d, dir) = tiny_dir();
    set_template(&dir, Some("{% for m in messages %}"));
    let e = load(dir.to_str().unwrap(), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("chat template") && e.contains(dir.to_str().unwrap()),
        "{e}"
    );
    set_template(
        &dir,
        Some("{{ raise_exception('System role not supported') }}"),
    );
    let m = load_dir(&dir);
    let e = m.east_prompt_ids("q").unwrap_err().to_string();
    assert!(e.contains("System role not supported"), "{e}");
}

/// `prompt_style = "authors"` writes the EAST authors' Llama 3 prompt text
/// (`PROMPT_TEMPLATE_LLAMA` of their data_generation/preprocess.py); it needs a Llama 3
/// vocabulary.
#[test]
fn authors_style() {
    let fx = reference();
    let source = std::fs::read_to_string(
        fixtures().join("chat_templates/meta-llama-Llama-3.2-3B-Instruct.jinja"),
    )
    .unwrap();
    let specials: BTreeMap<String, String> =
        serde_json::from_value(fx["specials"]["meta-llama-Llama-3.2-3B-Instruct"].clone()).unwrap();
    let settings = ChatSettings {
        style: PromptStyle::Authors,
        ..ChatSettings::default()
    };
    let chat = Chat::from_template(&source, specials, settings).unwrap();
    let p = chat.east_prompt("What is 2+3?").unwrap();
    // The authors' text, typed out from their file (a Python format string: `{{}}` is `{}`).
    assert_eq!(
        p,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\nPlease reason step by step, and put your final answer within \\boxed{}.<|eot_id|>\n<|start_header_id|>user<|end_header_id|>\nWhat is 2+3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
    );
    assert_eq!(p, AUTHORS_LLAMA_PROMPT.replace("{input}", "What is 2+3?"));
    // Training still renders with the template, as the authors' TRL code did.
    let (tp, _) = chat
        .render_training(
            &east::model::east_messages("What is 2+3?"),
            &[Message::assistant("5")],
        )
        .unwrap();
    assert!(tp.contains("Cutting Knowledge Date"), "{tp}");

    // A ChatML model has no Llama 3 headers: refused at load.
    let (_d, dir) = tiny_dir();
    let cfg = east::model::ModelConfig {
        path: dir.to_str().unwrap().into(),
        prompt_style: PromptStyle::Authors,
        ..Default::default()
    };
    let e = east::model::load_model(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("authors") && e.contains("<|start_header_id|>"),
        "{e}"
    );
}

/// A template is code from the model's author: one that loops 10^10 times (two nested
/// `range(100000)`, which ran until killed) stops at the fuel limit, one that doubles a string
/// 40 times (which aborted the process on a 1 GiB allocation) stops at the memory limit. Both
/// are errors naming the model's template, within seconds; the second template is refused from
/// then on, and `east sample` with it exits with the error instead of aborting.
#[test]
fn runaway_templates_stop_at_their_budget() {
    let (_d, dir) = tiny_dir();
    let cases = [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "template instructions",
        ),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
            "more than 256 MiB",
        ),
    ];
    for (template, why) in cases {
        // one rendering, timed (`-- --nocapture` prints it)
        let chat = Chat::from_template(template, BTreeMap::new(), ChatSettings::default()).unwrap();
        let started = std::time::Instant::now();
        let e = chat.east_prompt("q").unwrap_err().to_string();
        let secs = started.elapsed().as_secs_f64();
        eprintln!("{secs:.2} s to stop {template}");
        assert!(secs < 10.0 && e.contains(why), "{secs} s: {e}");
        // loaded with a model, the error names the model
        set_template(&dir, Some(template));
        let e = load_dir(&dir).east_prompt_ids("q").unwrap_err().to_string();
        assert!(
            e.contains(why) && e.contains(dir.to_str().unwrap()) && e.contains("chat template"),
            "{e}"
        );
    }
    let e = load_dir(&dir).east_prompt_ids("q").unwrap_err().to_string();
    assert!(e.contains("refused from now on"), "{e}");

    let out = dir.parent().unwrap().join("s.jsonl");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_east"))
        .args([
            "sample",
            "--model",
            dir.to_str().unwrap(),
            "--dataset",
            "gsm8k",
            "--limit",
            "1",
        ])
        .args([
            "--n",
            "1",
            "--max-new-tokens",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("more than 256 MiB"), "{stderr}");
}
