//! `--model` resolution and loading.
//!
//! A spec is, in this order:
//! 1. an existing `.gguf` file → [`load_gguf`];
//! 2. an existing folder → [`load_folder`]: `config.json`, `model.safetensors` or a sharded
//!    `model.safetensors.index.json`, `tokenizer.json`, optional `tokenizer_config.json`
//!    (chat template, special tokens), `chat_template.jinja` (the chat template; preferred over
//!    tokenizer_config.json's, as transformers does) and `generation_config.json` (its
//!    `eos_token_id` adds EOS ids);
//! 3. otherwise a Hugging Face repo id (`org/name`, optionally `org/name@revision`) → the same
//!    files fetched with hf-hub into the hub cache (`HF_HOME`, `HF_TOKEN` / the cached token
//!    and `HF_ENDPOINT` honoured; `HF_HUB_OFFLINE=1` uses the cache only).
//!
//! Every tensor the config requires is checked by name and shape before the model is built:
//! a missing or misshapen tensor is an error, never a random initialisation.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::chat::{Chat, ChatSettings};
use super::config::LlamaConfig;
use super::error::{read_json, ModelError, Result};
use super::gguf::{missing_model_hint, read_gguf};
use super::llama::Llama;
use super::tokenizer::{load_tokenizer_file, Tokenizer};

/// Where a model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Gguf(PathBuf),
    Folder(PathBuf),
    Hub {
        repo: String,
        revision: Option<String>,
    },
}

/// Everything about a model except its weights: tokenizer, config, chat template and special
/// ids. What rendering prompts and counting tokens need, so that sampling or evaluating
/// through a server ([`load_text`]) does not read the weights at all.
pub struct ModelText {
    pub tokenizer: Tokenizer,
    pub config: LlamaConfig,
    /// Renders prompts with the model's chat template (see [`super::chat`]).
    pub chat: Chat,
    /// Generation stops at any of these: config `eos_token_id` (+ GGUF eot/eom ids),
    /// generation_config.json's `eos_token_id`, and the template's end-of-turn token.
    pub eos_ids: Vec<u32>,
    pub bos_id: Option<u32>,
    /// Id to left-pad prompts with (pad_token_id, else the first EOS id, else 0). Padded
    /// positions are masked, so its value never matters for the result.
    pub pad_id: u32,
    /// The chat template string, when the checkpoint has one.
    pub chat_template: Option<String>,
    /// The spec as given, and what it resolved to.
    pub spec: String,
    pub source: ModelSource,
    /// The folder holding config/tokenizer files (folder and hub sources), e.g. to copy the
    /// tokenizer files into a checkpoint.
    pub dir: Option<PathBuf>,
    /// tokenizer.json contents for GGUF sources (which have no tokenizer file), so that a
    /// checkpoint written from a GGUF model is loadable as a folder.
    pub tokenizer_json: Option<Value>,
}

/// A loaded model with everything the sampler and the trainer need: the weights and the
/// [`ModelText`] (whose fields and prompt methods it derefs to).
pub struct LoadedModel {
    pub model: Llama,
    pub text: ModelText,
}

impl std::ops::Deref for LoadedModel {
    type Target = ModelText;
    fn deref(&self) -> &ModelText {
        &self.text
    }
}

impl std::ops::DerefMut for LoadedModel {
    fn deref_mut(&mut self) -> &mut ModelText {
        &mut self.text
    }
}

impl ModelText {
    /// The token ids of the EAST prompt of `question` ([`Chat::east_prompt`]: the model's chat
    /// template applied to system prompt + question + generation prompt, or the authors' prompt
    /// text under `model.prompt_style = "authors"`): what sampling and evaluation decode from.
    /// The one prompt entry point: a [`LoadedModel`] reaches it through `Deref`, so the native
    /// decoder and a server are given the same prompt.
    pub fn east_prompt_ids(&self, question: &str) -> candle_core::Result<Vec<u32>> {
        super::tokenizer::encode(&self.tokenizer, &self.east_prompt_text(question)?)
    }

    /// The text [`ModelText::east_prompt_ids`] tokenizes: what a serving engine is sent, so
    /// that both backends decode from the same prompt.
    pub fn east_prompt_text(&self, question: &str) -> candle_core::Result<String> {
        self.chat
            .east_prompt(question)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

impl std::fmt::Debug for ModelText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelText")
            .field("spec", &self.spec)
            .field("source", &self.source)
            .field("chat", &self.chat)
            .field("eos_ids", &self.eos_ids)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("text", &self.text)
            .finish_non_exhaustive()
    }
}

/// Decide what kind of model a `--model` spec names (see the module docs).
pub fn resolve_spec(spec: &str) -> Result<ModelSource> {
    let path = Path::new(spec);
    if path.is_file() {
        if spec.to_ascii_lowercase().ends_with(".gguf") {
            return Ok(ModelSource::Gguf(path.to_path_buf()));
        }
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
            hint: " is a file but not a .gguf; --model takes a .gguf file, a model folder or a Hugging Face repo id".into(),
        });
    }
    if path.is_dir() {
        return Ok(ModelSource::Folder(path.to_path_buf()));
    }
    let looks_like_path = spec.ends_with(".gguf")
        || spec.starts_with('/')
        || spec.starts_with('.')
        || spec.starts_with('~')
        || spec.contains('\\')
        || spec.matches('/').count() != 1;
    let (repo, revision) = match spec.split_once('@') {
        Some((r, rev)) => (r, Some(rev.to_string())),
        None => (spec, None),
    };
    let valid_repo = !looks_like_path
        && repo.split('/').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if valid_repo {
        Ok(ModelSource::Hub {
            repo: repo.to_string(),
            revision,
        })
    } else {
        Err(ModelError::MissingFile {
            path: path.to_path_buf(),
            hint: format!(
                "{} (--model takes a .gguf file, a model folder or a Hugging Face repo id like org/name)",
                missing_model_hint(path)
            ),
        })
    }
}

/// Load a model from a `--model` spec onto `device` with weights in `dtype`
/// (f32 on CPU — candle's CPU bf16 matmul is slow —, bf16 on CUDA), prompts rendered with the
/// default [`ChatSettings`].
pub fn load(spec: &str, device: &Device, dtype: DType) -> Result<LoadedModel> {
    load_with(spec, device, dtype, ChatSettings::default())
}

/// [`load`] with the prompt settings of `[model]` (style, date).
pub fn load_with(
    spec: &str,
    device: &Device,
    dtype: DType,
    chat: ChatSettings,
) -> Result<LoadedModel> {
    let mut m = match resolve_spec(spec)? {
        ModelSource::Gguf(p) => load_gguf(&p, device, dtype, chat)?,
        ModelSource::Folder(p) => load_folder(&p, device, dtype, chat)?,
        ModelSource::Hub { repo, revision } => {
            load_hub(&repo, revision.as_deref(), device, dtype, chat)?
        }
    };
    m.spec = spec.to_string();
    Ok(m)
}

/// Check that `available` (name → shape) holds every tensor `cfg` requires with the right
/// shape. Extra tensors are ignored (e.g. `rotary_emb.inv_freq`, a tied `lm_head.weight`).
pub fn check_tensors(
    cfg: &LlamaConfig,
    available: &HashMap<String, Vec<usize>>,
    origin: &str,
) -> Result<()> {
    for (name, shape) in Llama::expected_tensors(cfg) {
        match available.get(&name) {
            None => {
                return Err(ModelError::MissingTensor {
                    name,
                    origin: origin.to_string(),
                })
            }
            Some(found) if *found != shape => {
                return Err(ModelError::ShapeMismatch {
                    name,
                    expected: shape,
                    found: found.clone(),
                    origin: origin.to_string(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

fn add_unique(ids: &mut Vec<u32>, id: u32) {
    if !ids.contains(&id) {
        ids.push(id);
    }
}

fn eos_from_json(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => vec![],
    }
}

#[allow(clippy::too_many_arguments)] // the parts every loader assembles, named at each call
fn finish(
    tokenizer: Tokenizer,
    config: LlamaConfig,
    chat_template: Option<String>,
    extra_eos: Vec<u32>,
    source: ModelSource,
    dir: Option<PathBuf>,
    tokenizer_json: Option<Value>,
    mut special_tokens: BTreeMap<String, String>,
    settings: ChatSettings,
    origin: &str,
) -> Result<ModelText> {
    // Special tokens the tokenizer files do not name: from the config's ids.
    let id_token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    for (name, id) in [
        ("bos_token", config.bos_token_id),
        ("eos_token", config.eos_token_ids.first().copied()),
        ("pad_token", config.pad_token_id),
    ] {
        if let (false, Some(t)) = (special_tokens.contains_key(name), id_token(id)) {
            special_tokens.insert(name.to_string(), t);
        }
    }
    let chat = Chat::for_model(
        chat_template.as_deref(),
        special_tokens,
        &tokenizer,
        settings,
        origin,
    )?;
    let mut eos_ids = Vec::new();
    for &id in config.eos_token_ids.iter().chain(extra_eos.iter()) {
        add_unique(&mut eos_ids, id);
    }
    if let Some(id) = tokenizer.token_to_id(chat.end_of_turn()) {
        add_unique(&mut eos_ids, id);
    }
    if eos_ids.is_empty() {
        return Err(ModelError::InvalidConfig {
            msg: "no end-of-sequence token id (eos_token_id) and no end-of-turn token".into(),
            origin: origin.to_string(),
        });
    }
    let pad_id = config.pad_token_id.unwrap_or(eos_ids[0]);
    Ok(ModelText {
        tokenizer,
        bos_id: config.bos_token_id,
        config,
        chat,
        eos_ids,
        pad_id,
        chat_template,
        spec: origin.to_string(),
        source,
        dir,
        tokenizer_json,
    })
}

/// Load a GGUF file of any family east runs (dequantized to `dtype`); its chat template is
/// `tokenizer.chat_template`.
pub fn load_gguf(
    path: &Path,
    device: &Device,
    dtype: DType,
    chat: ChatSettings,
) -> Result<LoadedModel> {
    let origin = path.display().to_string();
    let g = read_gguf(path, device, dtype)?;
    let shapes: HashMap<String, Vec<usize>> = g
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    check_tensors(&g.config, &shapes, &origin)?;
    let vb = VarBuilder::from_tensors(g.tensors, dtype, device);
    let model = Llama::load(vb, &g.config)?;
    let text = gguf_text(
        path,
        g.tokenizer,
        g.config,
        g.chat_template,
        g.tokenizer_json,
        chat,
    )?;
    Ok(LoadedModel { model, text })
}

fn gguf_text(
    path: &Path,
    tokenizer: Tokenizer,
    config: LlamaConfig,
    chat_template: Option<String>,
    tokenizer_json: Value,
    chat: ChatSettings,
) -> Result<ModelText> {
    finish(
        tokenizer,
        config,
        chat_template,
        vec![],
        ModelSource::Gguf(path.to_path_buf()),
        None,
        Some(tokenizer_json),
        BTreeMap::new(),
        chat,
        &path.display().to_string(),
    )
}

/// The safetensors files of a model folder (single file or sharded index).
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::InvalidConfig {
                msg: "model.safetensors.index.json has no weight_map".into(),
                origin: index.display().to_string(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        for p in &paths {
            if !p.is_file() {
                return Err(ModelError::MissingFile {
                    path: p.clone(),
                    hint: " (listed in model.safetensors.index.json)".into(),
                });
            }
        }
        return Ok(paths);
    }
    Err(ModelError::MissingFile {
        path: single,
        hint: " (nor model.safetensors.index.json)".into(),
    })
}

/// The special tokens of a tokenizer_config.json (`bos_token`, … as a string or as an added
/// token `{"content": …}`): the variables transformers renders a chat template with.
fn special_tokens_of(tc: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in [
        "bos_token",
        "eos_token",
        "unk_token",
        "pad_token",
        "sep_token",
        "cls_token",
        "mask_token",
    ] {
        let text = match tc.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => v.get("content").and_then(Value::as_str).map(str::to_string),
            None => None,
        };
        if let Some(t) = text {
            out.insert(name.to_string(), t);
        }
    }
    out
}

/// Load a Hugging Face-layout folder.
pub fn load_folder(
    dir: &Path,
    device: &Device,
    dtype: DType,
    chat: ChatSettings,
) -> Result<LoadedModel> {
    let text = folder_text(dir, chat)?;
    let files = safetensors_files(dir)?;
    // SAFETY: the files are memory-mapped read-only; east never writes to a model folder
    // while it is loaded.
    let st =
        unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }.map_err(|e| {
            ModelError::Io {
                path: files[0].clone(),
                error: std::io::Error::other(e.to_string()),
            }
        })?;
    let shapes: HashMap<String, Vec<usize>> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    check_tensors(&text.config, &shapes, &dir.display().to_string())?;
    let vb = VarBuilder::from_backend(Box::new(st), dtype, device.clone());
    let model = Llama::load(vb, &text.config)?;
    Ok(LoadedModel { model, text })
}

/// The [`ModelText`] of a Hugging Face-layout folder: config.json, tokenizer.json,
/// tokenizer_config.json, chat_template.jinja and generation_config.json; the weights are not
/// opened (nor required).
pub fn folder_text(dir: &Path, chat: ChatSettings) -> Result<ModelText> {
    let origin = dir.display().to_string();
    let config_path = dir.join("config.json");
    let config_text = super::error::read_to_string(&config_path)?;
    let config = LlamaConfig::from_hf_json(&config_text, &config_path.display().to_string())?;

    let tokenizer = load_tokenizer_file(&dir.join("tokenizer.json"))?;
    let mut chat_template = None;
    let mut special_tokens = BTreeMap::new();
    let tc_path = dir.join("tokenizer_config.json");
    if tc_path.is_file() {
        let tc = read_json(&tc_path)?;
        special_tokens = special_tokens_of(&tc);
        chat_template = match tc.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
    }
    // transformers reads chat_template.jinja in place of tokenizer_config.json's template.
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        chat_template = Some(super::error::read_to_string(&jinja)?);
    }
    let mut extra_eos = Vec::new();
    let gen_path = dir.join("generation_config.json");
    if gen_path.is_file() {
        let g = read_json(&gen_path)?;
        if let Some(e) = g.get("eos_token_id") {
            extra_eos = eos_from_json(e);
        }
    }

    finish(
        tokenizer,
        config,
        chat_template,
        extra_eos,
        ModelSource::Folder(dir.to_path_buf()),
        Some(dir.to_path_buf()),
        None,
        special_tokens,
        chat,
        &origin,
    )
}

/// Download (or find in the hub cache) the files of `repo` and load them as a folder.
pub fn load_hub(
    repo: &str,
    revision: Option<&str>,
    device: &Device,
    dtype: DType,
    chat: ChatSettings,
) -> Result<LoadedModel> {
    let dir = fetch_hub(repo, revision)?;
    let mut m = load_folder(&dir, device, dtype, chat)?;
    m.source = ModelSource::Hub {
        repo: repo.to_string(),
        revision: revision.map(str::to_string),
    };
    Ok(m)
}

/// The [`ModelText`] of a `--model` spec (see the module docs) without reading any weights:
/// a GGUF's metadata, a folder's (or hub repo's) config and tokenizer files. What sampling and
/// evaluating through a server need; its prompts are those of [`load_with`]'s model.
pub fn load_text(spec: &str, chat: ChatSettings) -> Result<ModelText> {
    let mut t = match resolve_spec(spec)? {
        ModelSource::Gguf(p) => {
            let g = super::gguf::read_gguf_text(&p)?;
            gguf_text(
                &p,
                g.tokenizer,
                g.config,
                g.chat_template,
                g.tokenizer_json,
                chat,
            )?
        }
        ModelSource::Folder(p) => folder_text(&p, chat)?,
        ModelSource::Hub { repo, revision } => {
            let dir = fetch_hub_files(&repo, revision.as_deref(), false)?;
            let mut t = folder_text(&dir, chat)?;
            t.source = ModelSource::Hub { repo, revision };
            t
        }
    };
    t.spec = spec.to_string();
    Ok(t)
}

/// Fetch config, tokenizer and weights of a hub repo; returns the snapshot folder.
pub fn fetch_hub(repo: &str, revision: Option<&str>) -> Result<PathBuf> {
    fetch_hub_files(repo, revision, true)
}

/// [`fetch_hub`], the weights only when `weights` (config and tokenizer files always).
fn fetch_hub_files(repo: &str, revision: Option<&str>, weights: bool) -> Result<PathBuf> {
    use hf_hub::{Cache, Repo, RepoType};
    let hub_err = |msg: String| ModelError::Hub {
        repo: repo.to_string(),
        msg,
    };
    let hf_repo = match revision {
        Some(rev) => Repo::with_revision(repo.to_string(), RepoType::Model, rev.to_string()),
        None => Repo::new(repo.to_string(), RepoType::Model),
    };
    let offline = std::env::var("HF_HUB_OFFLINE")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    let cache = Cache::from_env();
    let cache_repo = cache.repo(hf_repo.clone());

    let api_repo = if offline {
        None
    } else {
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| cache.token());
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_token(token)
            .with_progress(false)
            .build()
            .map_err(|e| hub_err(e.to_string()))?;
        Some(api.repo(hf_repo))
    };
    // A commit hash has no ref file in the cache; its snapshot folder is named after it.
    let snapshot = revision
        .filter(|r| r.len() == 40 && r.chars().all(|c| c.is_ascii_hexdigit()))
        .map(|r| {
            cache
                .path()
                .join(format!("models--{}", repo.replace('/', "--")))
                .join("snapshots")
                .join(r)
        });
    let get = |file: &str, required: bool| -> Result<Option<PathBuf>> {
        if let Some(p) = cache_repo.get(file) {
            return Ok(Some(p));
        }
        if let Some(p) = snapshot
            .as_ref()
            .map(|d| d.join(file))
            .filter(|p| p.is_file())
        {
            return Ok(Some(p));
        }
        let Some(api) = api_repo.as_ref() else {
            return if required {
                Err(hub_err(format!(
                    "{file} is not in the hub cache and HF_HUB_OFFLINE is set"
                )))
            } else {
                Ok(None)
            };
        };
        match api.get(file) {
            Ok(p) => Ok(Some(p)),
            Err(e) if !required => {
                let _ = e;
                Ok(None)
            }
            Err(e) => Err(hub_err(format!("cannot fetch {file}: {e}"))),
        }
    };
    let config = get("config.json", true)?.expect("required");
    get("tokenizer.json", true)?;
    get("tokenizer_config.json", false)?;
    get("chat_template.jinja", false)?;
    get("generation_config.json", false)?;
    if weights {
        if get("model.safetensors.index.json", false)?.is_some() {
            let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
            let index = read_json(&dir.join("model.safetensors.index.json"))?;
            let mut shards: Vec<String> = index
                .get("weight_map")
                .and_then(Value::as_object)
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                get(&s, true)?;
            }
        } else {
            get("model.safetensors", true)?;
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Write `config.json` + `model.safetensors` (HF names) for `model`: a checkpoint that
/// [`load_folder`] and transformers can read. Tokenizer files are not written here.
pub fn save_checkpoint(model: &Llama, dir: &Path, torch_dtype: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        error: source,
    })?;
    let cfg = model.config().to_hf_json(torch_dtype);
    let cfg_text = serde_json::to_string_pretty(&cfg).expect("config serialises");
    write_atomic(&dir.join("config.json"), cfg_text.as_bytes())?;
    let tensors: HashMap<String, Tensor> = model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    let tmp = dir.join("model.safetensors.tmp");
    let path = dir.join("model.safetensors");
    let io = |error: std::io::Error| ModelError::Io {
        path: path.clone(),
        error,
    };
    if let Err(e) = candle_core::safetensors::save(&tensors, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(std::io::Error::other(e.to_string())));
    }
    // safetensors writes through a private temporary file (mode 0600); a checkpoint gets the
    // mode every other output gets from the umask.
    set_umask_mode(&tmp).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(())
}

/// Gives `path` the mode a newly created file gets from the process umask (0666 & !umask; the
/// umask is read from /proc so no thread sees it changed; 0644 where /proc does not say).
pub fn set_umask_mode(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let umask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666 & !umask))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            error: source,
        })
}
