//! The GPU clouds' HTTP layer, shared by `canopywave`, `lambda` and `runpod`: one reqwest
//! client (rustls), timeouts, requests spaced as the API asks, jittered backoff on 429 and
//! 5xx honouring `Retry-After`, and typed errors read from each API's envelope. The API key
//! is a [`Secret`]: sent only in the `Authorization` header and removed from every message.
//!
//! Keys come from the environment (`LAMBDA_API_KEY`, ...) or from a credentials file that
//! must be private (0600, refused otherwise, as ssh refuses a readable private key).

use crate::remote::{ErrorKind, classified};
use crate::ssh::Secret;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How an API's error body reads: its kind (when the API says) and the message to show.
pub type EnvelopeReader = fn(status: u16, body: &Value) -> (Option<ErrorKind>, String);

/// Settings every HTTP cloud shares (`api_url`, request spacing, tries).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub base_url: String,
    /// The least time between two requests (Lambda asks for 1 per second).
    pub min_interval: Duration,
    /// Tries per request (429, 5xx and dropped connections are retried).
    pub max_attempts: u32,
    /// The longest a `Retry-After` is honoured before the request fails instead.
    pub max_retry_after: Duration,
}

pub struct ApiClient {
    provider: &'static str,
    settings: ApiSettings,
    key: Secret,
    http: reqwest::Client,
    envelope: EnvelopeReader,
    last: tokio::sync::Mutex<Option<Instant>>,
}

/// Whether a request may be sent again after an answer that does not say if it was done
/// (a 5xx, a timeout): reads and idempotent writes may; a launch may not (the provider
/// checks whether the machine exists first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    Safe,
    OnlyIfRefused,
}

impl ApiClient {
    pub fn new(
        provider: &'static str,
        settings: ApiSettings,
        key: Secret,
        envelope: EnvelopeReader,
    ) -> Result<ApiClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("trainctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient {
            provider,
            settings,
            key,
            http,
            envelope,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// The client of `provider`, its key read now from `key_env` or the credentials file.
    pub fn for_provider(
        provider: &'static str,
        key_env: &str,
        credentials_file: Option<&Path>,
        base_url: &str,
        min_interval_ms: u64,
        max_attempts: u32,
        envelope: EnvelopeReader,
    ) -> Result<ApiClient> {
        let key = api_key(provider, key_env, credentials_file)?;
        ApiClient::new(
            provider,
            ApiSettings {
                base_url: base_url.to_string(),
                min_interval: Duration::from_millis(min_interval_ms),
                max_attempts,
                max_retry_after: Duration::from_secs(120),
            },
            key,
            envelope,
        )
    }

    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        self.call(reqwest::Method::GET, path, query, None, Repeat::Safe)
            .await
    }

    pub async fn post(&self, path: &str, body: &Value, repeat: Repeat) -> Result<Value> {
        self.call(reqwest::Method::POST, path, &[], Some(body), repeat)
            .await
    }

    /// Wait until the API's spacing allows another request.
    async fn pace(&self) {
        let mut last = self.last.lock().await;
        if let Some(t) = *last {
            let next = t + self.settings.min_interval;
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            }
        }
        *last = Some(Instant::now());
    }

    /// One request, retried as [`Repeat`] allows; the body of a 2xx answer as JSON (null
    /// when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        repeat: Repeat,
    ) -> Result<Value> {
        let url = format!("{}{}", self.settings.base_url.trim_end_matches('/'), path);
        let what = format!("{} {method} {path}", self.provider);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.pace().await;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(self.key.expose())
                .header("Accept", "application/json");
            if !query.is_empty() {
                req = req.query(query);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let last = attempt >= self.settings.max_attempts.max(1);
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    // Refused before anything was sent: always safe to try again.
                    let unsent = e.is_connect();
                    let msg = self.key.redact(&format!("{what}: {}", error_chain(&e)));
                    if last || !(unsent || repeat == Repeat::Safe) {
                        bail!(msg);
                    }
                    let wait = backoff(attempt);
                    tracing::warn!("{msg}; trying again in {:.1} s", wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let bytes = resp.bytes().await.map_err(|e| {
                anyhow!(self.key.redact(&format!("{what}: reading the answer: {e}")))
            })?;
            let json: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    Value::String(crate::sanitize::sanitize_line(
                        bytes[..bytes.len().min(300)].trim_ascii(),
                    ))
                })
            };
            if (200..300).contains(&status) {
                return Ok(json);
            }
            let (kind, message) = (self.envelope)(status, &json);
            let message = self
                .key
                .redact(&crate::sanitize::sanitize_line(message.as_bytes()))
                .chars()
                .take(500)
                .collect::<String>();
            let retryable = status == 429 || (status >= 500 && repeat == Repeat::Safe);
            if retryable && !last {
                let wait = match retry_after {
                    Some(w) if w > self.settings.max_retry_after => {
                        bail!(
                            "{what}: HTTP {status} asks to wait {} s, more than {} s: {message}",
                            w.as_secs(),
                            self.settings.max_retry_after.as_secs()
                        );
                    }
                    Some(w) => w,
                    None => backoff(attempt),
                };
                tracing::warn!(
                    "{what}: HTTP {status} ({message}); trying again in {:.1} s",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            let kind = kind.or(match status {
                401 | 403 => Some(ErrorKind::Auth),
                404 => Some(ErrorKind::NotFound),
                400 | 422 => Some(ErrorKind::BadRequest),
                _ => None,
            });
            let text = format!("{what}: HTTP {status}: {message}");
            return Err(match kind {
                Some(k) => classified(k, text),
                None => anyhow!(text),
            });
        }
    }
}

/// An error and its causes on one line (reqwest's own Display stops at the first).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `Retry-After` in seconds (the HTTP-date form is rare from APIs: backoff is used).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// 0.5 s doubling per try up to 16 s, each ±50 % at random.
pub fn backoff(attempt: u32) -> Duration {
    let base = 0.5 * 2f64.powi(attempt.saturating_sub(1).min(5) as i32);
    let r = (crate::model::now_ms() as u64 ^ (attempt as u64).wrapping_mul(0x9E37_79B9)) % 1000;
    Duration::from_secs_f64(base * (0.5 + r as f64 / 1000.0))
}

/// The credentials file: `$TRAINCTL_CREDENTIALS`, else `credentials.toml` beside the user
/// config (`~/.config/trainctl/credentials.toml`).
pub fn default_credentials_file() -> PathBuf {
    if let Some(p) = std::env::var_os("TRAINCTL_CREDENTIALS") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::ssh::config::home().join(".config"));
    base.join("trainctl").join("credentials.toml")
}

/// The API key of `provider`: the environment variable `env`, else `api_key` in the
/// `[provider]` table of the credentials file, which must be private to its owner.
pub fn api_key(provider: &str, env: &str, file: Option<&Path>) -> Result<Secret> {
    if let Ok(k) = std::env::var(env)
        && !k.trim().is_empty()
    {
        return Ok(Secret::new(k.trim()));
    }
    let file = file.map_or_else(default_credentials_file, Path::to_path_buf);
    let missing = || {
        classified(
            ErrorKind::Auth,
            format!(
                "no {provider} API key: set {env}, or put `[{provider}] api_key = \"...\"` in {} (mode 0600)",
                file.display()
            ),
        )
    };
    let meta = match std::fs::metadata(&file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(anyhow!("reading {}: {e}", file.display())),
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(classified(
            ErrorKind::Auth,
            format!(
                "{} holds API keys but others may read it (mode {mode:04o}): `chmod 600 {}` first; it is not read until then",
                file.display(),
                file.display()
            ),
        ));
    }
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    // The parser's own message quotes the line, which may hold a key: only where.
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, col) = e
            .span()
            .map(|s| crate::config::line_col(&text, s.start))
            .unwrap_or((0, 0));
        anyhow!("{}:{line}:{col}: not valid TOML", file.display())
    })?;
    doc.get(provider)
        .and_then(|t| t.get("api_key"))
        .and_then(|k| k.as_str())
        .filter(|k| !k.trim().is_empty())
        .map(|k| Secret::new(k.trim()))
        .ok_or_else(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        assert!(backoff(1) <= Duration::from_millis(750));
        assert!(backoff(20) <= Duration::from_secs(24));
        assert!(backoff(4) >= Duration::from_secs(2));
    }

    #[test]
    fn a_credentials_file_others_can_read_is_refused_and_a_private_one_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::testkit::TempDir::new("trainctl-creds");
        let f = dir.path().join("credentials.toml");
        std::fs::write(&f, "[lambda]\napi_key = \"secret_abc_123\"\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = api_key("lambda", "TRAINCTL_TEST_NO_SUCH_VAR", Some(&f)).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("chmod 600") && !text.contains("secret_abc"),
            "{text}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let k = api_key("lambda", "TRAINCTL_TEST_NO_SUCH_VAR", Some(&f)).unwrap();
        assert_eq!(k.expose(), "secret_abc_123");
        assert!(!format!("{k:?}").contains("secret"));
        // Another provider's table is not this one's key.
        let e = api_key("runpod", "TRAINCTL_TEST_NO_SUCH_VAR", Some(&f)).unwrap_err();
        assert_eq!(crate::remote::error_kind(&e), Some(ErrorKind::Auth));
        // A broken file names where, never what (the line may hold a key).
        std::fs::write(&f, "[lambda]\napi_key = \"secret_abc_123\n").unwrap();
        let text = format!(
            "{:#}",
            api_key("lambda", "TRAINCTL_TEST_NO_SUCH_VAR", Some(&f)).unwrap_err()
        );
        assert!(text.contains(":2:") && !text.contains("secret"), "{text}");
    }
}
