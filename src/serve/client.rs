//! A blocking HTTP client for OpenAI-compatible servers: requests spread over several base
//! URLs (least outstanding requests), retried with exponential backoff and jitter on connection
//! errors, timeouts, 429 and 5xx; any other 4xx fails at once with the server's own message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::config::{Api, ServerConfig};
use super::response::{self, BadResponse, Choice};

/// A request that failed for good.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The server answered 4xx (other than 429): retrying would not help.
    #[error("{url} refused the request (HTTP {status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// No answer after every retry (connection refused, timeout, 429, 5xx).
    #[error("{url} did not answer after {attempts} attempt(s): {last}")]
    Unreachable {
        url: String,
        attempts: usize,
        last: String,
    },
    /// An answer east cannot read.
    #[error("{url}: {error}")]
    Bad { url: String, error: BadResponse },
}

/// What a completions request asks for, besides the prompt.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: usize,
    pub stop: Vec<String>,
}

/// Connection to one served model behind one or more base URLs.
pub struct Client {
    agent: ureq::Agent,
    urls: Vec<String>,
    outstanding: Vec<AtomicUsize>,
    rotate: AtomicUsize,
    /// The served model name sent with every request.
    pub model: String,
    api: Api,
    /// The key itself lives only here, in memory (never logged or written).
    key: Option<String>,
    retries: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("urls", &self.urls)
            .field("model", &self.model)
            .field("api", &self.api)
            .field("key", &self.key.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Client {
    /// Connects to `urls` (base URLs ending in `/v1`): reads the API key from the variable named
    /// by `api_key_env` and, without `server.model`, takes the one model `/v1/models` lists.
    pub fn connect(cfg: &ServerConfig, urls: &[String]) -> anyhow::Result<Client> {
        if urls.is_empty() {
            anyhow::bail!(
                "the openai backend needs a server: set server.url (e.g. \"http://127.0.0.1:8000/v1\", or a list) or server.launch"
            );
        }
        let key = match &cfg.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "server.api_key_env names `{var}`, but that environment variable is not set"
                )
            })?),
            None => None,
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout(Duration::from_secs_f64(cfg.timeout_s))
            .build();
        let mut client = Client {
            agent,
            urls: urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            outstanding: urls.iter().map(|_| AtomicUsize::new(0)).collect(),
            rotate: AtomicUsize::new(0),
            model: String::new(),
            api: cfg.api,
            key,
            retries: cfg.retries,
        };
        client.model = match &cfg.model {
            Some(m) => m.clone(),
            None => {
                let (url, body) = client.call("GET", "/models", None)?;
                let ids = response::model_ids(&body).map_err(|error| RequestError::Bad {
                    url: url.clone(),
                    error,
                })?;
                match ids.as_slice() {
                    [one] => one.clone(),
                    [] => anyhow::bail!("{url}/models lists no model; set server.model"),
                    many => anyhow::bail!(
                        "{url}/models lists several models ({}); set server.model to one of them",
                        many.join(", ")
                    ),
                }
            }
        };
        Ok(client)
    }

    /// The base URLs, as recorded in samples.meta.json.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Whether prompts go to `/v1/chat/completions` as messages.
    pub fn is_chat(&self) -> bool {
        self.api == Api::Chat
    }

    /// `n` completions of `prompt` (rendered text, or the system and user messages for the chat
    /// API) with `seed`.
    pub fn complete(
        &self,
        prompt: &Prompt,
        n: usize,
        seed: u32,
        p: &GenParams,
    ) -> Result<Vec<Choice>, RequestError> {
        let body = request_body(&self.model, prompt, n, seed, p);
        let path = match prompt {
            Prompt::Text(_) => "/completions",
            Prompt::Messages(_) => "/chat/completions",
        };
        let (url, text) = self.call("POST", path, Some(&body.to_string()))?;
        response::parse_choices(&text, matches!(prompt, Prompt::Messages(_)))
            .map_err(|error| RequestError::Bad { url, error })
    }

    /// The URL with the fewest requests in flight (ties: round robin).
    fn pick(&self) -> usize {
        let start = self.rotate.fetch_add(1, Ordering::Relaxed);
        (0..self.urls.len())
            .map(|k| (start + k) % self.urls.len())
            .min_by_key(|&i| self.outstanding[i].load(Ordering::Relaxed))
            .expect("at least one URL")
    }

    /// One HTTP call with retries; returns the base URL that answered and the body.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(String, String), RequestError> {
        let mut attempt = 0;
        loop {
            let i = self.pick();
            let base = &self.urls[i];
            self.outstanding[i].fetch_add(1, Ordering::Relaxed);
            let result = self
                .send(method, &format!("{base}{path}"), body)
                .map_err(|e| *e);
            self.outstanding[i].fetch_sub(1, Ordering::Relaxed);
            let last = match result {
                Ok(text) => return Ok((base.clone(), text)),
                Err(ureq::Error::Status(status, r)) if status != 429 && status < 500 => {
                    let message = response::error_message(&r.into_string().unwrap_or_default());
                    return Err(RequestError::Refused {
                        url: base.clone(),
                        status,
                        message,
                    });
                }
                Err(ureq::Error::Status(status, r)) => format!(
                    "HTTP {status}: {}",
                    response::error_message(&r.into_string().unwrap_or_default())
                ),
                Err(ureq::Error::Transport(t)) => t.to_string(),
            };
            if attempt >= self.retries {
                return Err(RequestError::Unreachable {
                    url: base.clone(),
                    attempts: attempt + 1,
                    last,
                });
            }
            std::thread::sleep(backoff(attempt));
            attempt += 1;
        }
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
    ) -> Result<String, Box<ureq::Error>> {
        let mut req = self.agent.request(method, url);
        if let Some(key) = &self.key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let resp = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(b)
                .map_err(Box::new)?,
            None => req.call().map_err(Box::new)?,
        };
        resp.into_string()
            .map_err(|e| Box::new(ureq::Error::from(e)))
    }
}

/// The JSON body of a completions request. Besides temperature and top_p it switches off the
/// samplers servers apply by default and east's native sampler does not have (llama.cpp's
/// server: top_k = 40, min_p = 0.05; vLLM and SGLang default to off): `top_k = -1` and
/// `min_p = 0` (every engine reads these as "disabled"), so the server samples from the same
/// distribution, softmax(logits / T) cut to the nucleus top_p, and does the same sampling work.
pub fn request_body(model: &str, prompt: &Prompt, n: usize, seed: u32, p: &GenParams) -> Value {
    let mut body = serde_json::json!({
        "model": model, "n": n, "seed": seed, "temperature": p.temperature,
        "top_p": p.top_p, "top_k": -1, "min_p": 0.0, "max_tokens": p.max_tokens,
    });
    if !p.stop.is_empty() {
        body["stop"] = serde_json::json!(p.stop);
    }
    match prompt {
        Prompt::Text(t) => {
            body["prompt"] = serde_json::json!(t);
            // vLLM would otherwise add a BOS token to a prompt that already has its own
            body["add_special_tokens"] = serde_json::json!(false);
        }
        Prompt::Messages(m) => {
            body["messages"] = serde_json::json!(m
                .iter()
                .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
                .collect::<Vec<_>>());
        }
    }
    body
}

/// What is sent as the prompt.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Text rendered by east with the model's chat format (`/v1/completions`).
    Text(String),
    /// Messages for `/v1/chat/completions`.
    Messages(Vec<crate::model::Message>),
}

/// Wait before retry `attempt` (0-based): 0.5 s · 2^attempt, at most 30 s, times a random
/// factor in [0.5, 1.5) so that many clients do not retry in step.
pub fn backoff(attempt: usize) -> Duration {
    let base = (0.5 * 2f64.powi(attempt.min(16) as i32)).min(30.0);
    Duration::from_secs_f64(base * (0.5 + rand::random::<f64>()))
}

/// The seed sent with the request for samples `first_sample..` of question `id`: derived from
/// (seed, question id, sample index) as the native sampler seeds its streams; 31 bits, which
/// every engine accepts.
pub fn request_seed(seed: u64, id: &str, first_sample: usize) -> u32 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"east-server-seed");
    h.update(seed.to_le_bytes());
    h.update(id.as_bytes());
    h.update((first_sample as u64).to_le_bytes());
    let d = h.finalize();
    u32::from_le_bytes([d[0], d[1], d[2], d[3]]) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        for attempt in 0..8 {
            let d = backoff(attempt).as_secs_f64();
            let base = (0.5 * 2f64.powi(attempt as i32)).min(30.0);
            assert!(d >= 0.5 * base && d < 1.5 * base, "{attempt}: {d}");
        }
        assert!(backoff(40).as_secs_f64() < 45.0);
    }

    #[test]
    fn requests_switch_off_the_samplers_east_does_not_have() {
        let p = GenParams {
            temperature: 0.7,
            top_p: 0.9,
            max_tokens: 256,
            stop: vec!["\n\n".into()],
        };
        let b = request_body("east", &Prompt::Text("<p>".into()), 8, 7, &p);
        assert_eq!(b["top_k"], -1);
        assert_eq!(b["min_p"], 0.0);
        assert_eq!(b["temperature"], 0.7);
        assert_eq!(b["top_p"], 0.9);
        assert_eq!((b["n"].clone(), b["seed"].clone()), (8.into(), 7.into()));
        assert_eq!(b["max_tokens"], 256);
        assert_eq!(b["stop"][0], "\n\n");
        assert_eq!(b["prompt"], "<p>");
        assert_eq!(b["add_special_tokens"], false);
        let m = vec![crate::model::Message {
            role: "user".into(),
            content: "q".into(),
        }];
        let b = request_body("east", &Prompt::Messages(m), 1, 0, &p);
        assert_eq!(b["messages"][0]["content"], "q");
        assert_eq!(b["top_k"], -1);
        assert!(b.get("prompt").is_none());
    }

    #[test]
    fn seeds_differ_per_question_and_sample_and_fit_31_bits() {
        let a = request_seed(42, "gsm8k/train/0", 0);
        assert_eq!(a, request_seed(42, "gsm8k/train/0", 0));
        assert_ne!(a, request_seed(42, "gsm8k/train/0", 1));
        assert_ne!(a, request_seed(42, "gsm8k/train/1", 0));
        assert_ne!(a, request_seed(43, "gsm8k/train/0", 0));
        assert!(a < 1 << 31);
    }
}
