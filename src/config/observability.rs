//! `[observability]`: metrics and traces (`[observability.traces]`).

use std::collections::BTreeMap;
use std::ops::Range;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::secrets::headers;
use super::values::{HeaderText, SecretText};
use super::{ConfigError, HeaderValue, SecretRef, Validator};

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
    /// `[egress]`, which its connections are guarded by.
    pub egress: super::EgressConfig,
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

/// `[observability]` as written.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObservability {
    /// Counts and times exchanges for `GET /metrics` (auditor tokens);
    /// `false`: nothing is counted and `/metrics` answers 404.
    #[schemars(extend("default" = true))]
    metrics: Option<bool>,
    /// OpenTelemetry traces exported over OTLP/HTTP (JSON); without the
    /// table, no traces.
    #[schemars(with = "Option<RawTraces>")]
    traces: Option<Spanned<RawTraces>>,
}

/// `[observability.traces]` as written.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawTraces {
    /// The collector's OTLP/HTTP traces URL (`http://` or `https://`).
    #[schemars(extend("default" = DEFAULT_TRACES_ENDPOINT))]
    endpoint: Option<String>,
    /// Headers of every export request; a value may end in `secret:NAME`,
    /// a secret of this table's `secrets`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, HeaderText>")]
    headers: BTreeMap<String, String>,
    /// Secrets the headers name, read at start (one that cannot be read
    /// stops the proxy).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, SecretText>")]
    secrets: BTreeMap<String, String>,
    /// The share of new traces kept, from 0 to 1 (by trace id); a caller's
    /// sampled `traceparent` decides for its own trace.
    #[schemars(extend("default" = 1.0))]
    sample_ratio: Option<f64>,
    /// The resource's `service.name`.
    #[schemars(extend("default" = "portcullis"))]
    service_name: Option<String>,
}

impl RawObservability {
    pub(super) fn validate(self, v: &Validator<'_>) -> Result<ObservabilityConfig, ConfigError> {
        Ok(ObservabilityConfig {
            metrics: self.metrics.unwrap_or(true),
            traces: self
                .traces
                .map(|traces| {
                    let span = traces.span();
                    traces.into_inner().validate(v, span)
                })
                .transpose()?,
        })
    }
}

impl RawTraces {
    /// `span` is the table's: errors point at its first line.
    fn validate(self, v: &Validator<'_>, span: Range<usize>) -> Result<TracesConfig, ConfigError> {
        let err = |field: &str, message: String| {
            v.error(
                Some(span.clone()),
                &format!("observability.traces.{field}"),
                message,
            )
        };
        let endpoint = self
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
        let sample_ratio = self.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(err(
                "sample_ratio",
                format!("`{sample_ratio}` must be between 0 and 1"),
            ));
        }
        let service_name = self.service_name.unwrap_or_else(|| "portcullis".into());
        if service_name.is_empty() {
            return Err(err("service_name", "must not be empty".into()));
        }
        let mut secrets = Vec::new();
        for (name, reference) in self.secrets {
            let reference = v
                .secret_ref(&reference)
                .map_err(|m| err(&format!("secrets.{name}"), m))?;
            secrets.push((name, reference));
        }
        let headers = headers(self.headers, |name| {
            secrets.iter().any(|(known, _)| known == name)
        })
        .map_err(|(header, secret)| {
            err(
                &format!("headers.{header}"),
                format!(
                    "refers to `secret:{secret}`, which is not in `[observability.traces] secrets`"
                ),
            )
        })?;
        Ok(TracesConfig {
            endpoint,
            headers,
            secrets,
            sample_ratio,
            service_name,
            // Given by `[egress]` once the whole config is read.
            egress: super::EgressConfig::default(),
        })
    }
}
