//! The run configuration: one TOML file with a section per stage. Every stage flag of the CLI is
//! also a key here (`east weight --a 1.5` ≡ `[weight] a = 1.5`), and `--set section.key=value`
//! overrides a key from the command line. Unknown keys, wrong types and out-of-range values are
//! errors that name the key and where it came from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterConfig;
use crate::data::DataConfig;
use crate::eval::EvalConfig;
use crate::model::{ModelConfig, PromptStyle};
use crate::sample::SampleConfig;
use crate::serve::{Api, Backend, ServerConfig};
use crate::tensorboard::ReportTo;
use crate::train::TrainConfig;
use crate::weight::{WeightConfig, WeightOptions};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    #[error("--set {arg}: {message}")]
    Override { arg: String, message: String },
}

/// The whole run. Each section is defined by the stage that reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub sample: SampleConfig,
    pub cluster: ClusterConfig,
    pub weight: WeightConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    pub run: RunConfig,
    pub server: ServerConfig,
}

/// `[run]`: the iterative pipeline (`east run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Folder name of the run, under `dir`.
    pub name: String,
    /// Parent folder of run directories.
    pub dir: String,
    /// Self-training rounds T.
    pub rounds: usize,
    /// Evaluate the starting model as round 0.
    pub eval_base: bool,
    /// Round 1's samples made elsewhere (`east merge` of shards, a vLLM job) instead of sampling.
    pub samples: Option<String>,
    /// Dashboards of the whole run: `["tensorboard"]` writes one TensorBoard run in
    /// `<run>/tensorboard/` (every round's training scalars, per-round accuracy, sampling
    /// throughput, entropy and weight histograms).
    pub report_to: ReportTo,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "east".into(),
            dir: "runs".into(),
            rounds: 1,
            eval_base: true,
            samples: None,
            report_to: ReportTo::default(),
        }
    }
}

impl RunConfig {
    /// Range checks that types alone cannot express: `(key, message)` of the first bad key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        // `..` and `.` would put the run in run.dir's parent or in run.dir itself, `_samples`
        // in the samples cache beside the runs.
        if self.name.is_empty()
            || self.name.contains(['/', '\\'])
            || matches!(self.name.as_str(), "." | ".." | SAMPLES_CACHE)
        {
            return Err((
                "name",
                format!(
                    "must be a folder name (not `.`, `..` or `{SAMPLES_CACHE}`), got `{}`",
                    self.name
                ),
            ));
        }
        if self.rounds == 0 {
            return Err(("rounds", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// The folder under `run.dir` that holds the samples cache shared by the runs.
pub const SAMPLES_CACHE: &str = "_samples";

/// The configs of `configs/`, compiled into the binary: (name, TOML text).
pub const BUNDLED: &[(&str, &str)] = &[
    ("demo", include_str!("../configs/demo.toml")),
    ("gsm8k_1b", include_str!("../configs/gsm8k_1b.toml")),
    ("gsm8k_8b", include_str!("../configs/gsm8k_8b.toml")),
    ("math_1b", include_str!("../configs/math_1b.toml")),
    ("math_8b", include_str!("../configs/math_8b.toml")),
    (
        "gsm8k_qwen2.5_math_1.5b",
        include_str!("../configs/gsm8k_qwen2.5_math_1.5b.toml"),
    ),
    (
        "math_qwen2.5_math_1.5b",
        include_str!("../configs/math_qwen2.5_math_1.5b.toml"),
    ),
];

/// The bundled config a bare name (`gsm8k_1b` or `gsm8k_1b.toml`, no folder) stands for.
pub fn bundled(path: &Path) -> Option<(&'static str, &'static str)> {
    let text = path.to_str()?;
    let name = text.strip_suffix(".toml").unwrap_or(text);
    BUNDLED.iter().copied().find(|(n, _)| *n == name)
}

/// The first comment line of a bundled config: what it is for.
pub fn bundled_summary(text: &str) -> &str {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# "))
        .unwrap_or("")
}

const SECTIONS: &[&str] = &[
    "model", "data", "sample", "cluster", "weight", "train", "eval", "run", "server",
];

impl Config {
    /// Reads a config file, applies `--set` overrides and validates the result.
    ///
    /// A path that is not a file but names a bundled config (`gsm8k_1b.toml` or `gsm8k_1b`, see
    /// [`BUNDLED`]) loads that one, so `east run --config gsm8k_1b.toml` works from any folder.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let (config, origin) = Self::load_unchecked(path, overrides)?;
        config.validate(&origin)?;
        Ok(config)
    }

    /// [`Config::load`] without the range checks, and the origin that names where the values
    /// came from: for a command whose flags still change keys, which validates once at the end
    /// (a flag may mend what the file alone gets wrong, such as one side of a cross-key rule).
    pub fn load_unchecked(
        path: Option<&Path>,
        overrides: &[String],
    ) -> Result<(Config, String), ConfigError> {
        let (text, origin) = match path {
            Some(p) if !p.exists() && bundled(p).is_some() => {
                let (name, text) = bundled(p).expect("checked");
                (text.to_string(), format!("bundled configs/{name}.toml"))
            }
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    error: source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "defaults".to_string()),
        };
        Self::parse_toml_str(&text, &origin, overrides)
    }

    /// Parses TOML text (errors are attributed to `origin`), applies overrides, validates.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let (config, origin) = Self::parse_toml_str(text, origin, overrides)?;
        config.validate(&origin)?;
        Ok(config)
    }

    /// Parses TOML text and applies overrides without validating; returns the config and the
    /// origin that names both (`FILE with --set k=v`). The overrides are validated with the file,
    /// never before it, so `--set` can mend a value the file gets wrong.
    fn parse_toml_str(
        text: &str,
        origin: &str,
        overrides: &[String],
    ) -> Result<(Config, String), ConfigError> {
        // Parse the file alone first so its errors carry the file's line and column.
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        if overrides.is_empty() {
            return Ok((config, origin.to_string()));
        }
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        for arg in overrides {
            apply_override(&mut table, arg)?;
        }
        let origin = format!("{origin} with --set {}", overrides.join(" --set "));
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: origin.clone(),
                    message: e.to_string(),
                })?;
        Ok((config, origin))
    }

    /// Range checks that types alone cannot express, section by section.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let checks = [
            ("model", self.model.validate()),
            ("data", self.data.validate()),
            ("sample", self.sample.validate()),
            ("cluster", self.cluster.validate()),
            ("weight", self.weight.validate()),
            ("train", self.train.validate()),
            ("eval", self.eval.validate()),
            ("run", self.run.validate()),
            ("server", self.server.validate()),
        ];
        for (section, check) in checks {
            if let Err((key, message)) = check {
                return Err(ConfigError::Invalid {
                    origin: origin.to_string(),
                    key: format!("{section}.{key}"),
                    message,
                });
            }
        }
        self.check_prompt_reaches_server(origin)
    }

    /// The chat API sends messages that the server renders with its own template, so the
    /// authors' prompt text (`model.prompt_style = "authors"`) would be silently dropped.
    fn check_prompt_reaches_server(&self, origin: &str) -> Result<(), ConfigError> {
        let served = self.sample.backend == Backend::Openai || self.eval.backend == Backend::Openai;
        if served && self.server.api == Api::Chat && self.model.prompt_style == PromptStyle::Authors
        {
            return Err(ConfigError::Invalid {
                origin: origin.to_string(),
                key: "server.api".into(),
                message: "\"chat\" lets the server render the prompt with its own template, so \
                          model.prompt_style = \"authors\" would be ignored: use server.api = \
                          \"completions\" (east renders the prompt) or prompt_style = \"chat\""
                    .into(),
            });
        }
        Ok(())
    }

    /// What decides `train.jsonl`: `[weight]` and the rows `train.loss` needs.
    pub fn weight_options(&self) -> WeightOptions {
        WeightOptions {
            loss: self.train.loss,
            weight: self.weight.clone(),
        }
    }

    /// Whether `key` (`section.key`) is a key of the schema that is not set (an optional key
    /// at its default, none), as opposed to no key at all.
    pub fn is_unset(&self, key: &str) -> bool {
        let value = serde_json::to_value(self).expect("config serialises");
        key.split('.')
            .try_fold(&value, |v, part| v.get(part))
            .is_some_and(serde_json::Value::is_null)
    }

    /// The configuration as TOML (what `east run` stores in the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// Applies one `section.key=value` override. The value is read as a TOML value (`8`, `0.5`,
/// `true`, `"text"`, `[1, 2]`); anything that is not valid TOML is taken as a plain string.
fn apply_override(table: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Override {
        arg: arg.to_string(),
        message,
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| err("expected section.key=value".into()))?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(err(format!("`{key}` is not of the form section.key")));
    }
    if !SECTIONS.contains(&parts[0]) {
        return Err(err(format!(
            "unknown section `{}` (sections: {})",
            parts[0],
            SECTIONS.join(", ")
        )));
    }
    let value = parse_value(raw.trim());
    let mut node = table;
    for part in &parts[..parts.len() - 1] {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| err(format!("`{part}` is not a section")))?;
    }
    node.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Loss;
    use crate::weight::Metric;

    #[test]
    fn defaults_follow_the_paper() {
        let c = Config::default();
        assert_eq!(c.sample.n, 128);
        assert_eq!(c.weight.a, 1.0);
        assert_eq!(c.train.batch_size, 16);
        assert_eq!(c.train.epochs, 3);
        assert_eq!(c.train.warmup_ratio, 0.1);
        assert_eq!(c.train.max_grad_norm, 1.0);
        assert_eq!(c.train.weight_decay, 0.0);
        assert_eq!(c.eval.max_new_tokens, 2048);
        assert_eq!((c.train.lora_rank, c.train.lora_alpha), (16, 16.0));
        c.validate("defaults").unwrap();
    }

    #[test]
    fn authors_prompt_through_the_chat_api_is_refused() {
        let text = "[model]\nprompt_style = \"authors\"\n[sample]\nbackend = \"openai\"\n\
                    [server]\nurl = \"http://127.0.0.1:9/v1\"\napi = \"chat\"\n";
        let e = Config::from_toml_str(text, "run.toml", &[])
            .and_then(|c| c.validate("run.toml").map(|_| c))
            .unwrap_err()
            .to_string();
        assert!(e.contains("run.toml") && e.contains("server.api"), "{e}");
        // east renders the authors' prompt itself through /v1/completions: accepted
        let ok = text.replace("api = \"chat\"", "api = \"completions\"");
        let c = Config::from_toml_str(&ok, "run.toml", &[]).unwrap();
        c.validate("run.toml").unwrap();
    }

    #[test]
    fn bad_server_settings_name_file_and_key() {
        let cases = [
            ("url = \"10.0.0.5:8000/v1\"", "server.url"),
            ("concurrency = 0", "server.concurrency"),
            ("timeout_s = 0.0", "server.timeout_s"),
            ("startup_timeout_s = -1.0", "server.startup_timeout_s"),
            ("n_per_request = 0", "server.n_per_request"),
            ("launch = \"llama-server --port {port}\"", "server.launch"),
            ("launch = \"llama-server -m {model}\"", "server.launch"),
            (
                "launch = \"llama-server -m {model} --port {port}\"\nurl = \"http://h:1/v1\"",
                "server.url",
            ),
            ("api_key_env = \"A=B\"", "server.api_key_env"),
        ];
        for (body, key) in cases {
            let e = Config::from_toml_str(&format!("[server]\n{body}\n"), "srv.toml", &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("srv.toml") && e.contains(key), "{body}: {e}");
        }
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = Config::from_toml_str("[sample]\nn = 8\ntemprature = 0.5\n", "my.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("my.toml") && e.contains("temprature") && e.contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_key_and_file() {
        let e = Config::from_toml_str("[sample]\nn = \"many\"\n", "my.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("my.toml") && e.contains("line 2") && e.contains("n"),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_names_key_and_file() {
        let e = Config::from_toml_str("[sample]\ntop_p = 1.5\n", "my.toml", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "my.toml: key `sample.top_p`: must be in (0, 1], got 1.5");
        let e = Config::from_toml_str(
            "[train]\nbatch_size = 16\nmicro_batch_size = 3\n",
            "c.toml",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("train.micro_batch_size"), "{e}");
    }

    #[test]
    fn overrides_apply_with_toml_types() {
        let c = Config::from_toml_str(
            "[weight]\na = 1.0\n",
            "c.toml",
            &[
                "weight.a=1.5".into(),
                "sample.n=8".into(),
                "model.path=models/x.gguf".into(),
                "weight.metric=\"accuracy\"".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.weight.a, 1.5);
        assert_eq!(c.sample.n, 8);
        assert_eq!(c.model.path, "models/x.gguf");
        assert_eq!(c.weight.metric, Metric::Accuracy);
    }

    #[test]
    fn bad_overrides_are_errors() {
        let e = Config::from_toml_str("", "c.toml", &["sample.n=-1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--set sample.n=-1"), "{e}");
        let e = Config::from_toml_str("", "c.toml", &["nosection.n=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown section"), "{e}");
        let e = Config::from_toml_str("", "c.toml", &["sample.bogus=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::from_toml_str("", "c.toml", &["sample.n".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("section.key=value"), "{e}");
    }

    #[test]
    fn train_keys_are_validated() {
        // enumerations are typed: a bad value names the file, the line and the key, and lists the values
        let e = Config::from_toml_str("[train]\nengine = \"gpu\"\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml")
                && e.contains("line 2")
                && e.contains("engine = \"gpu\"")
                && e.contains("`autograd`"),
            "{e}"
        );
        let e = Config::from_toml_str("", "c.toml", &["train.engine=gpu".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--set train.engine=gpu")
                && e.contains("engine")
                && e.contains("`autograd`"),
            "{e}"
        );
        let e = Config::from_toml_str("[model]\ndevice = \"gpu\"\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("cpu, cuda or cuda:N"),
            "{e}"
        );
        let e = Config::from_toml_str("[train]\nmerge = true\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.merge"), "{e}");
        let c = Config::from_toml_str(
            "[train]\nlora = true\nmerge = true\nsave_steps = 0\n",
            "c.toml",
            &[],
        )
        .unwrap();
        assert_eq!(
            (c.train.save_steps, c.train.engine),
            (0, crate::train::EngineChoice::Auto)
        );
        let e = Config::from_toml_str("[train]\nweighting = \"ppl\"\n", "c.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("weighting = \"ppl\"") && e.contains("`lww`"),
            "{e}"
        );
    }

    #[test]
    fn approximate_is_false_or_a_tolerance() {
        let c = Config::from_toml_str("[cluster]\napproximate = 1e-4\n", "c.toml", &[]).unwrap();
        assert_eq!(c.cluster.approximate, Some(1e-4));
        assert_eq!(c.cluster.grade_options().approximate, Some(1e-4));
        let c = Config::from_toml_str("[cluster]\napproximate = false\n", "c.toml", &[]).unwrap();
        assert_eq!(c.cluster.approximate, None);
        assert!(
            c.to_toml().contains("approximate = false"),
            "{}",
            c.to_toml()
        );
        for bad in ["true", "\"loose\"", "2.0", "0", "-1e-4"] {
            let e =
                Config::from_toml_str(&format!("[cluster]\napproximate = {bad}\n"), "c.toml", &[]);
            let e = e.unwrap_err().to_string();
            assert!(
                e.contains("approximate") && e.contains("tolerance"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn bare_names_load_the_bundled_configs() {
        let dir = tempfile::tempdir().unwrap();
        let here = std::env::current_dir().unwrap();
        for (name, text) in BUNDLED {
            let want = Config::from_toml_str(text, "x", &[]).unwrap();
            let by_name = Config::load(Some(Path::new(name)), &[]).unwrap();
            let by_file_name = Config::load(Some(Path::new(&format!("{name}.toml"))), &[]).unwrap();
            assert_eq!((&by_name, &by_file_name), (&want, &want), "{name}");
            // the same bytes as the file in configs/
            assert_eq!(
                *text,
                std::fs::read_to_string(here.join("configs").join(format!("{name}.toml"))).unwrap()
            );
        }
        let e = Config::load(Some(Path::new("gsm8k_2b.toml")), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("gsm8k_2b.toml"), "{e}");
        // a file of that name wins over the bundled one; a path with a folder is never bundled
        let own = dir.path().join("demo.toml");
        std::fs::write(&own, "[run]\nname = \"mine\"\n").unwrap();
        assert_eq!(Config::load(Some(&own), &[]).unwrap().run.name, "mine");
        assert!(bundled(Path::new("configs/demo.toml")).is_none());
        let all: Vec<&str> = std::fs::read_dir(here.join("configs"))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".toml")
                    .map(String::from)
            })
            .map(|n| {
                BUNDLED
                    .iter()
                    .find(|(b, _)| *b == n)
                    .expect("every file in configs/ is bundled")
                    .0
            })
            .collect();
        assert_eq!(all.len(), BUNDLED.len());
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = Config::default();
        c.weight.a = -1.25;
        c.train.loss = Loss::Kto;
        let back = Config::from_toml_str(&c.to_toml(), "x", &[]).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.train.beta, 0.1, "TRL's default β");
    }
}
