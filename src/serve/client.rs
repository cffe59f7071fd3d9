//! A blocking HTTP client for OpenAI-compatible servers: requests spread over several base
//! URLs (fewest in flight among those not failing, [`super::balance`]), retried with
//! exponential backoff and jitter (or the server's `Retry-After`) on connection errors,
//! timeouts, 429 and 5xx; any other 4xx, and any redirect, fails at once with the server's own
//! message. Answers are read up to `server.max_response_mb`.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use super::balance::{Balancer, MAX_OUT};
use super::config::{Api, ServerConfig};
use super::response::{self, BadResponse, Choice};

/// A request that failed for good.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The server answered 4xx (other than 429) or a redirect: retrying would not help.
    #[error("{url} refused the request (HTTP {status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    /// No answer after every retry (connection refused, timeout, 429, 5xx) from any URL.
    #[error("{url} did not answer after {attempts} attempt(s): {last}")]
    Unreachable {
        /// The failing URLs, comma-separated.
        url: String,
        attempts: usize,
        /// The last error (of each failing URL, when there are several).
        last: String,
    },
    /// An answer larger than `server.max_response_mb`.
    #[error("{url}: the answer to a request of {n} completion(s) is larger than server.max_response_mb = {limit_mb} MB; ask for fewer completions per request (server.n_per_request) or raise server.max_response_mb")]
    TooLarge {
        url: String,
        n: usize,
        limit_mb: u64,
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
    balancer: Balancer,
    /// The served model name sent with every request.
    pub model: String,
    api: Api,
    /// The key itself lives only here, in memory (never logged or written).
    key: Option<String>,
    retries: usize,
    max_response_bytes: u64,
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

/// What one attempt at a request came to.
enum Attempt {
    Answer(String),
    /// The server answered and refused (4xx other than 429, a redirect).
    Refused {
        status: u16,
        message: String,
    },
    TooLarge,
    Bad(BadResponse),
    /// Worth retrying, with how long the server asked to wait.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
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
        if let Err((key, msg)) = cfg.validate() {
            anyhow::bail!("server.{key}: {msg}");
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
            // a redirected POST would be resent as a GET or without its body: report it
            .redirects(0)
            .build();
        let mut client = Client {
            agent,
            urls: urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            balancer: Balancer::new(urls.len()),
            model: String::new(),
            api: cfg.api,
            key,
            retries: cfg.retries,
            max_response_bytes: cfg.max_response_mb * 1_000_000,
        };
        client.model = match &cfg.model {
            Some(m) => m.clone(),
            None => {
                let (url, body) = client.call("GET", "/models", None, 0)?;
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

    /// `server.api`: which endpoint gets the prompts.
    pub fn api(&self) -> Api {
        self.api
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
        let (url, text) = self.call("POST", path, Some(&body.to_string()), n)?;
        response::parse_choices(&text, matches!(prompt, Prompt::Messages(_)))
            .map_err(|error| RequestError::Bad { url, error })
    }

    /// One HTTP call (of `n` completions, for messages) with retries; returns the base URL
    /// that answered and the body. A failure on one URL is retried at once on another that is
    /// in rotation; retries with a wait are spent only while every URL is failing.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        n: usize,
    ) -> Result<(String, String), RequestError> {
        let (mut waits, mut failures) = (0usize, 0usize);
        // enough to try every URL after each wait
        let most_failures = (self.retries + 1) * self.urls.len();
        loop {
            let i = self.balancer.acquire();
            let base = &self.urls[i];
            let (error, retry_after) = match self.send(method, &format!("{base}{path}"), body) {
                Attempt::Failed { error, retry_after } => (error, retry_after),
                answered => {
                    self.balancer.answered(i);
                    let url = base.clone();
                    return match answered {
                        Attempt::Answer(text) => Ok((url, text)),
                        Attempt::Refused { status, message } => Err(RequestError::Refused {
                            url,
                            status,
                            message,
                        }),
                        Attempt::TooLarge => Err(RequestError::TooLarge {
                            url,
                            n,
                            limit_mb: self.max_response_bytes / 1_000_000,
                        }),
                        Attempt::Bad(error) => Err(RequestError::Bad { url, error }),
                        Attempt::Failed { .. } => unreachable!("matched above"),
                    };
                }
            };
            self.balancer.failed(i, &error, retry_after);
            failures += 1;
            if failures < most_failures && self.balancer.any_usable() {
                continue;
            }
            if waits >= self.retries || failures >= most_failures {
                return Err(self.unreachable(failures));
            }
            std::thread::sleep(retry_after.map_or_else(|| backoff(waits), |d| d.min(MAX_OUT)));
            waits += 1;
        }
    }

    /// The error once every URL has failed: each failing URL with its last error.
    fn unreachable(&self, attempts: usize) -> RequestError {
        let failing = self.balancer.failing();
        let url = failing
            .iter()
            .map(|(i, _)| self.urls[*i].as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let last = match failing.as_slice() {
            [(_, e)] => e.clone(),
            many => many
                .iter()
                .map(|(i, e)| format!("{}: {e}", self.urls[*i]))
                .collect::<Vec<_>>()
                .join("; "),
        };
        RequestError::Unreachable {
            url,
            attempts,
            last,
        }
    }

    fn send(&self, method: &str, url: &str, body: Option<&str>) -> Attempt {
        let mut req = self.agent.request(method, url);
        if let Some(key) = &self.key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        match result {
            Ok(r) if (300..400).contains(&r.status()) => Attempt::Refused {
                status: r.status(),
                message: format!(
                    "a redirect to {}: east does not follow redirects (a POST would lose its body); set server.url to the address the server answers at",
                    r.header("Location").unwrap_or("(no Location header)")
                ),
            },
            Ok(r) => self.read_answer(r),
            Err(ureq::Error::Status(status, r)) if status != 429 && status < 500 => {
                Attempt::Refused {
                    status,
                    message: response::error_message(&error_text(r)),
                }
            }
            Err(ureq::Error::Status(status, r)) => Attempt::Failed {
                retry_after: r.header("Retry-After").and_then(retry_after),
                error: format!("HTTP {status}: {}", response::error_message(&error_text(r))),
            },
            Err(ureq::Error::Transport(t)) => Attempt::Failed {
                error: t.to_string(),
                retry_after: None,
            },
        }
    }

    /// The body of a 2xx answer, read up to `server.max_response_mb` (ureq's own `into_string`
    /// stops at 10 MB, which 128 long completions pass).
    fn read_answer(&self, r: ureq::Response) -> Attempt {
        let limit = self.max_response_bytes;
        let declared = r
            .header("Content-Length")
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Attempt::TooLarge;
        }
        let mut bytes = Vec::new();
        if let Err(e) = r.into_reader().take(limit + 1).read_to_end(&mut bytes) {
            return Attempt::Failed {
                error: format!("reading the answer: {e}"),
                retry_after: None,
            };
        }
        if bytes.len() as u64 > limit {
            return Attempt::TooLarge;
        }
        match String::from_utf8(bytes) {
            Ok(text) => Attempt::Answer(text),
            Err(e) => Attempt::Bad(BadResponse(format!(
                "the answer is not UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            ))),
        }
    }
}

/// The text of an error answer, as much as an excerpt needs; invalid UTF-8 is replaced.
fn error_text(r: ureq::Response) -> String {
    let mut bytes = Vec::new();
    let _ = r.into_reader().take(64 * 1024).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A `Retry-After` value: delta-seconds or an HTTP-date (IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`); a date in the past is no wait. Anything else is ignored
/// (the backoff applies).
pub fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = http_date_secs(value)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(Duration::from_secs((at - now).max(0) as u64))
}

/// Seconds since the UNIX epoch of an IMF-fixdate.
fn http_date_secs(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let f: Vec<&str> = s.split_whitespace().collect();
    let [_weekday, day, month, year, time, "GMT"] = f.as_slice() else {
        return None;
    };
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *sec > 60 {
        return None;
    }
    // days from 1970-01-01 to year-month-day (Howard Hinnant's days_from_civil)
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
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

    // Expected: Python's calendar.timegm(email.utils.parsedate("Sun, 06 Nov 1994 08:49:37 GMT"))
    // = 784111777; timegm((2000, 2, 29, 23, 59, 59)) = 951868799.
    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            http_date_secs("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            http_date_secs("Tue, 29 Feb 2000 23:59:59 GMT"),
            Some(951_868_799)
        );
        // in the past: no wait
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        for bad in [
            "soon",
            "-5",
            "1.5",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "",
        ] {
            assert_eq!(retry_after(bad), None, "{bad}");
        }
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
