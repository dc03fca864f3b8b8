//! `[observability]`: metrics and traces (`[observability.traces]`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, HeaderValue, SecretRef, Validator, parse_header_value, parse_secret_ref};

/// `[observability]`: what the proxy tells operators about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservabilityConfig {
    /// Counts and times exchanges for `GET /metrics` (on unless
    /// `metrics = false`).
    pub metrics: bool,
    /// OpenTelemetry traces exported over OTLP/HTTP (`[observability.traces]`;
    /// off when the table is absent).
    pub traces: Option<TracesConfig>,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            metrics: true,
            traces: None,
        }
    }
}

/// `[observability.traces]`: where spans go and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct TracesConfig {
    /// The collector's OTLP/HTTP traces URL (JSON is posted to it as is).
    pub endpoint: String,
    /// Headers of every export request; a value may end in a secret
    /// reference (`"Bearer secret:otlp_token"`).
    pub headers: Vec<(String, HeaderValue)>,
    pub secrets: Vec<(String, SecretRef)>,
    /// The share of new traces recorded (a caller's `traceparent` decides
    /// for its own trace).
    pub sample_ratio: f64,
    pub service_name: String,
}

/// The collector a `[observability.traces]` table without `endpoint` sends to.
pub const DEFAULT_TRACES_ENDPOINT: &str = "http://127.0.0.1:4318/v1/traces";

/// Headers for an HTTP client, with secret references resolved from
/// `secrets` (name, value). Values are marked sensitive (never printed).
pub fn resolve_headers(
    headers: &[(String, HeaderValue)],
    secrets: &[(String, String)],
) -> Result<reqwest::header::HeaderMap, String> {
    let mut map = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        let text = match value {
            HeaderValue::Literal(text) => text.clone(),
            HeaderValue::Secret { prefix, secret } => {
                let value = secrets
                    .iter()
                    .find(|(key, _)| key == secret)
                    .map(|(_, value)| value)
                    .ok_or_else(|| format!("secret `{secret}` is not defined"))?;
                format!("{prefix}{value}")
            }
        };
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a valid header name"))?;
        let mut value = reqwest::header::HeaderValue::from_str(&text)
            .map_err(|_| format!("the value of header `{name}` is not valid"))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObservability {
    pub(super) metrics: Option<bool>,
    pub(super) traces: Option<Spanned<RawTraces>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTraces {
    pub(super) endpoint: Option<String>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) secrets: BTreeMap<String, String>,
    pub(super) sample_ratio: Option<f64>,
    pub(super) service_name: Option<String>,
}

impl Validator<'_> {
    pub(super) fn traces(&self, raw: Spanned<RawTraces>) -> Result<TracesConfig, ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let err = |field: &str, message: String| {
            self.error(
                Some(span.clone()),
                &format!("observability.traces.{field}"),
                message,
            )
        };
        let endpoint = raw
            .endpoint
            .unwrap_or_else(|| DEFAULT_TRACES_ENDPOINT.to_owned());
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            || reqwest::Url::parse(&endpoint).is_err()
        {
            return Err(err(
                "endpoint",
                format!("`{endpoint}` is not an http:// or https:// URL"),
            ));
        }
        let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(err(
                "sample_ratio",
                format!("`{sample_ratio}` must be between 0 and 1"),
            ));
        }
        let service_name = raw.service_name.unwrap_or_else(|| "portcullis".into());
        if service_name.is_empty() {
            return Err(err("service_name", "must not be empty".into()));
        }
        let base = self.path.parent().unwrap_or(Path::new("."));
        let mut secrets = Vec::new();
        for (name, reference) in raw.secrets {
            let reference = parse_secret_ref(&reference, base)
                .map_err(|m| err(&format!("secrets.{name}"), m))?;
            secrets.push((name, reference));
        }
        let mut headers = Vec::new();
        for (header, value) in raw.headers {
            let parsed = parse_header_value(&value);
            if let HeaderValue::Secret { secret, .. } = &parsed
                && !secrets.iter().any(|(name, _)| name == secret)
            {
                return Err(err(
                    &format!("headers.{header}"),
                    format!(
                        "refers to `secret:{secret}`, which is not in `[observability.traces] secrets`"
                    ),
                ));
            }
            headers.push((header, parsed));
        }
        Ok(TracesConfig {
            endpoint,
            headers,
            secrets,
            sample_ratio,
            service_name,
        })
    }
}
