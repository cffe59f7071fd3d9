//! The sampler's output for a fixed seed must not change when the decoder is made faster
//! without changing its arithmetic (shared-prefix attention, buffer reuse, …).
//!
//! tests/fixtures/decode_samples_seed42.json holds the token ids that the decoder of commit
//! 5f22dd6 (before the issue-19 speed work) produced for two GSM8K questions of different prompt
//! lengths (so one row is left-padded), 8 samples each at T = 0.7, and one greedy completion
//! each, on the bundled SmolLM2-135M-Instruct. It was written by this test with
//! `EAST_RECORD_DECODE_FIXTURE=1` on that commit; it is never rewritten by a normal run.

use std::path::PathBuf;

use candle_core::{DType, Device};
use east::data::{self, DatasetSpec, FieldMap};
use east::decode::{generate_group, DecodeSettings, Request, SamplerPlacement, Sampling};
use east::model::{gguf::bundled_smollm2_path, load, LoadedModel};
use serde_json::{json, Value};

const SAMPLES: usize = 8;
const NEW_TOKENS: usize = 40;

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode_samples_seed42.json")
}

fn model() -> LoadedModel {
    let path = bundled_smollm2_path();
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-model.sh first",
        path.display()
    );
    load(path.to_str().unwrap(), &Device::Cpu, DType::F32).unwrap()
}

/// Token ids of every sample, per request, for `sampling`, the group decoded in `cpu_shards`
/// shards of rows (None: the decoder's choice).
fn run(
    lm: &LoadedModel,
    sampling: Sampling,
    samples: usize,
    cpu_shards: Option<usize>,
) -> Vec<Vec<Vec<u32>>> {
    let qs = data::load(&DatasetSpec::Gsm8k, "train", &FieldMap::default()).unwrap();
    let requests: Vec<Request> = [0usize, 3]
        .iter()
        .map(|&i| Request {
            prompt_ids: lm.east_prompt_ids(&qs[i].question).unwrap(),
            id: qs[i].id.clone(),
            first_sample: 0,
            samples,
        })
        .collect();
    assert_ne!(
        requests[0].prompt_ids.len(),
        requests[1].prompt_ids.len(),
        "the two prompts must differ in length so that one is left-padded"
    );
    let settings = DecodeSettings {
        sampling,
        max_new_tokens: NEW_TOKENS,
        seed: 42,
        stop: vec![],
        sampler: SamplerPlacement::Host,
        kv_dtype: None,
        cpu_shards,
    };
    let (gens, _) = generate_group(lm, &requests, &settings, |_| {}).unwrap();
    gens.into_iter()
        .map(|g| g.into_iter().map(|s| s.token_ids).collect())
        .collect()
}

const T07: Sampling = Sampling {
    temperature: 0.7,
    top_p: 1.0,
};

#[test]
fn fixed_seed_samples_equal_those_of_the_decoder_before_the_speed_work() {
    let lm = model();
    let sampled = run(&lm, T07, SAMPLES, None);
    let greedy = run(&lm, Sampling::GREEDY, 1, None);
    let got = json!({ "sampled": sampled, "greedy": greedy });
    if std::env::var("EAST_RECORD_DECODE_FIXTURE").is_ok_and(|v| v == "1") {
        std::fs::write(
            fixture_path(),
            serde_json::to_string_pretty(&got).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    assert_matches_fixture(&got);
    let distinct: std::collections::HashSet<&Vec<u32>> = sampled[0].iter().collect();
    assert!(distinct.len() > 1, "T = 0.7 gave identical samples");
}

/// The decoder splits a group's rows into shards, one per core; the samples must not depend
/// on how many (the rows are dealt out in turn, so 3 shards mix both questions' rows, and
/// rows finish at different steps in each shard).
#[test]
fn samples_do_not_depend_on_the_number_of_cpu_shards() {
    let lm = model();
    for shards in [2, 3] {
        let sampled = run(&lm, T07, SAMPLES, Some(shards));
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture_path()).unwrap()).unwrap();
        assert_eq!(json!(sampled), want["sampled"], "{shards} shards");
    }
}

fn assert_matches_fixture(got: &Value) {
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_path()).unwrap()).unwrap();
    // Compare per sample, so a failure names the first one that moved.
    for key in ["sampled", "greedy"] {
        let (w, g) = (&want[key], &got[key]);
        for (r, (wr, gr)) in w
            .as_array()
            .unwrap()
            .iter()
            .zip(g.as_array().unwrap())
            .enumerate()
        {
            assert_eq!(wr, gr, "{key}: request {r}");
        }
        assert_eq!(w, g, "{key}");
    }
}
