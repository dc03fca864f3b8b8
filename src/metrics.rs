//! Prometheus metrics: counters and histograms with bounded label sets,
//! kept in atomics on the hot path and rendered in the text exposition
//! format (version 0.0.4) at `GET /metrics`.
//!
//! Label values come from the config (server, client, interceptor, rule and
//! plugin names), from fixed lists (MCP methods, decisions, phases), or from
//! a server's own tool list; every family also caps its series
//! ([`MAX_SERIES`]): past the cap, new label sets are counted under `other`.
//! No session id, argument or request id is ever a label.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// At most this many label sets per family.
pub const MAX_SERIES: usize = 2_000;

/// Histogram bucket bounds in seconds: 10 µs to 10 s, for interceptors
/// (microseconds) as for container starts (seconds).
const BOUNDS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The bounds in nanoseconds, for the hot path.
#[expect(
    clippy::indexing_slicing,
    reason = "evaluated at compile time: an index out of range fails the build"
)]
const BOUNDS_NS: [u64; 19] = {
    let mut out = [0u64; 19];
    let mut i = 0;
    while i < BOUNDS.len() {
        out[i] = (BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A monotonic count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Durations in fixed buckets (each counts its own range; rendering makes
/// them cumulative), their sum and count.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS
            .iter()
            .position(|bound| ns <= *bound)
            .unwrap_or(BOUNDS.len());
        if let Some(count) = self.buckets.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// How many durations were observed.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }
}

/// A family's series by label values (joined with `\x1f` as the key).
#[derive(Debug)]
pub struct Family<const N: usize, S> {
    labels: [&'static str; N],
    series: RwLock<HashMap<Box<str>, Arc<S>>>,
}

impl<const N: usize, S: Default> Family<N, S> {
    pub fn new(labels: [&'static str; N]) -> Self {
        Self {
            labels,
            series: RwLock::new(HashMap::new()),
        }
    }

    /// The series of these label values (created on first use; `other`
    /// for every label once the family is full).
    pub fn get(&self, values: [&str; N]) -> Arc<S> {
        let mut key = String::with_capacity(values.iter().map(|v| v.len() + 1).sum());
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                key.push('\x1f');
            }
            // The separator cannot be forged by a value.
            key.extend(value.chars().map(|c| if c == '\x1f' { ' ' } else { c }));
        }
        if let Some(series) = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key.as_str())
        {
            return series.clone();
        }
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        if series.len() >= MAX_SERIES && !series.contains_key(key.as_str()) {
            key = vec![OTHER; N].join("\x1f");
        }
        series.entry(key.into_boxed_str()).or_default().clone()
    }

    /// Every series, by label values, in a stable order.
    fn snapshot(&self) -> Vec<(Vec<String>, Arc<S>)> {
        let series = self.series.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(Vec<String>, Arc<S>)> = series
            .iter()
            .map(|(key, value)| {
                (
                    key.split('\x1f').map(str::to_owned).collect(),
                    value.clone(),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn pairs<'a>(&'a self, values: &'a [String]) -> Vec<(&'a str, &'a str)> {
        self.labels
            .iter()
            .copied()
            .zip(values.iter().map(String::as_str))
            .collect()
    }
}

impl<const N: usize> Family<N, Counter> {
    /// Renders the family (a counter) into `out`.
    pub fn render(&self, out: &mut Exposition, name: &str, help: &str) {
        out.declare(name, help, "counter");
        for (values, counter) in self.snapshot() {
            out.sample(name, &self.pairs(&values), counter.get() as f64);
        }
    }
}

impl<const N: usize> Family<N, Histogram> {
    /// Renders the family (a histogram, in seconds) into `out`.
    pub fn render(&self, out: &mut Exposition, name: &str, help: &str) {
        out.declare(name, help, "histogram");
        for (values, histogram) in self.snapshot() {
            out.histogram(name, &self.pairs(&values), &histogram);
        }
    }
}

/// The value of a label past the family's cap, or of an unknown method.
pub const OTHER: &str = "other";

/// Metrics text being built: families declared once (HELP and TYPE), their
/// samples grouped under them, in the order declared.
#[derive(Debug, Default)]
pub struct Exposition {
    order: Vec<String>,
    families: BTreeMap<String, String>,
}

impl Exposition {
    /// Declares a family (again is a no-op).
    pub fn declare(&mut self, name: &str, help: &str, kind: &str) {
        if self.families.contains_key(name) {
            return;
        }
        self.order.push(name.to_owned());
        self.families.insert(
            name.to_owned(),
            format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"),
        );
    }

    /// One sample of the family `family` (declared before): `name` is the
    /// family's name or one of its histogram series.
    fn push(&mut self, family: &str, name: &str, labels: &[(&str, &str)], value: f64) {
        let Some(text) = self.families.get_mut(family) else {
            return;
        };
        text.push_str(name);
        if !labels.is_empty() {
            text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                let _ = write!(text, "{label}=\"{}\"", escape(value));
            }
            text.push('}');
        }
        let _ = writeln!(text, " {value}");
    }

    /// One sample of a counter or gauge declared before.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, name, labels, value);
    }

    /// A histogram's buckets, sum and count, in seconds.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let mut cumulative = 0u64;
        let bucket_name = format!("{name}_bucket");
        for (i, bucket) in histogram.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = BOUNDS.get(i).map_or("+Inf".to_owned(), f64::to_string);
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.push(name, &bucket_name, &with_le, cumulative as f64);
        }
        let sum = histogram.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        self.push(name, &format!("{name}_sum"), labels, sum);
        self.push(name, &format!("{name}_count"), labels, cumulative as f64);
    }

    /// The text, families in the order declared.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for name in &self.order {
            if let Some(text) = self.families.get(name) {
                out.push_str(text);
            }
        }
        out
    }
}

/// A label value escaped for the text format.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The proxy's own series, updated on the hot path. What the gateway knows
/// at any time (sessions, servers' states) is read when rendering.
#[derive(Debug)]
pub struct Metrics {
    /// Exchanges: method, server, tool (or prompt), decision.
    pub requests: Family<4, Counter>,
    /// Refusals: the interceptor that refused, method.
    pub denials: Family<2, Counter>,
    /// Redacted secrets: rule, direction.
    pub redactions: Family<2, Counter>,
    /// Refusals by the rate limiter, per client.
    pub rate_limited: Family<1, Counter>,
    /// An exchange's whole time in the proxy: method.
    pub request_seconds: Family<1, Histogram>,
    /// Time waiting on the server: server.
    pub upstream_seconds: Family<1, Histogram>,
    /// Time in each interceptor: interceptor, phase.
    pub interceptor_seconds: Family<2, Histogram>,
    /// Events (audit record kinds other than exchanges): kind.
    pub events: Family<1, Counter>,
    /// How long a server took to start and answer `initialize`: server,
    /// upstream (container, process, remote).
    pub upstream_start_seconds: Family<2, Histogram>,
    /// Time to commit an exchange's audit record.
    pub audit_commit_seconds: Histogram,
    /// Exchanges refused because the audit log could not commit them.
    pub audit_failures: Counter,
    /// Connections refused at the listener: the cap that refused them.
    pub connections_refused: Family<1, Counter>,
    /// HTTP authentication failures and throttled attempts: endpoint,
    /// outcome (`refused`, `throttled`).
    pub auth_failures: Family<2, Counter>,
    /// `[audit.ship]`: how far the log is shipped, and whether shipping
    /// fails now (set once shipping starts).
    pub shipping: std::sync::OnceLock<Shipping>,
}

/// The shipper's own state, read when rendering.
#[derive(Debug, Clone, Default)]
pub struct Shipping {
    /// The last record the fleet's database holds.
    pub shipped: Arc<AtomicU64>,
    pub failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::new(["method", "server", "tool", "decision"]),
            denials: Family::new(["interceptor", "method"]),
            redactions: Family::new(["rule", "direction"]),
            rate_limited: Family::new(["client"]),
            request_seconds: Family::new(["method"]),
            upstream_seconds: Family::new(["server"]),
            interceptor_seconds: Family::new(["interceptor", "phase"]),
            events: Family::new(["kind"]),
            upstream_start_seconds: Family::new(["server", "upstream"]),
            audit_commit_seconds: Histogram::default(),
            audit_failures: Counter::default(),
            connections_refused: Family::new(["cap"]),
            auth_failures: Family::new(["endpoint", "outcome"]),
            shipping: std::sync::OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Renders the proxy's own series into `out`.
    pub fn render(&self, out: &mut Exposition) {
        self.requests.render(
            out,
            "portcullis_requests_total",
            "Exchanges handled, by method, server, tool or prompt, and decision (allow, deny, error).",
        );
        self.denials.render(
            out,
            "portcullis_denials_total",
            "Exchanges refused, by the interceptor that refused them and method.",
        );
        self.redactions.render(
            out,
            "portcullis_redactions_total",
            "Secrets redacted, by rule and direction.",
        );
        self.rate_limited.render(
            out,
            "portcullis_rate_limited_total",
            "Calls refused by the rate limiter, by client.",
        );
        self.request_seconds.render(
            out,
            "portcullis_request_duration_seconds",
            "An exchange's whole time in the proxy (interceptors, upstream, audit), by method.",
        );
        self.upstream_seconds.render(
            out,
            "portcullis_upstream_duration_seconds",
            "Time waiting on the server for a request's answer, by server.",
        );
        self.interceptor_seconds.render(
            out,
            "portcullis_interceptor_duration_seconds",
            "Time in each interceptor, by interceptor and phase.",
        );
        self.events.render(
            out,
            "portcullis_events_total",
            "Events recorded (sessions, authentication failures, servers, reloads, pins, plugins), by kind.",
        );
        self.upstream_start_seconds.render(
            out,
            "portcullis_upstream_start_duration_seconds",
            "How long a server took to start and answer initialize (a container's cold start), by server and upstream kind.",
        );
        self.connections_refused.render(
            out,
            "portcullis_connections_refused_total",
            "Connections refused at the listener, by the cap that refused them.",
        );
        self.auth_failures.render(
            out,
            "portcullis_auth_failures_total",
            "HTTP authentication failures, and attempts refused by the brute-force throttle, by endpoint and outcome (refused, throttled).",
        );
        out.declare(
            "portcullis_audit_commit_duration_seconds",
            "Time to commit an exchange's audit record (durable: until it is on disk).",
            "histogram",
        );
        out.histogram(
            "portcullis_audit_commit_duration_seconds",
            &[],
            &self.audit_commit_seconds,
        );
        out.declare(
            "portcullis_audit_failures_total",
            "Exchanges refused because the audit log could not commit their record.",
            "counter",
        );
        out.sample(
            "portcullis_audit_failures_total",
            &[],
            self.audit_failures.get() as f64,
        );
        if let Some(shipping) = self.shipping.get() {
            out.declare(
                "portcullis_audit_shipped_seq",
                "The last audit record the fleet's database holds (`[audit.ship]`): the lag is portcullis_audit_last_seq minus this.",
                "gauge",
            );
            out.sample(
                "portcullis_audit_shipped_seq",
                &[],
                shipping.shipped.load(Ordering::Relaxed) as f64,
            );
            out.declare(
                "portcullis_audit_ship_failing",
                "Whether shipping to the fleet's database fails now (1: records wait in this replica's store).",
                "gauge",
            );
            out.sample(
                "portcullis_audit_ship_failing",
                &[],
                f64::from(u8::from(shipping.failing.load(Ordering::Relaxed))),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(5));
        histogram.observe(Duration::from_micros(30));
        histogram.observe(Duration::from_secs(20));
        let mut out = Exposition::default();
        out.declare("t_seconds", "test", "histogram");
        out.histogram("t_seconds", &[("server", "a\"b")], &histogram);
        let text = out.finish();
        assert!(text.starts_with("# HELP t_seconds test\n# TYPE t_seconds histogram\n"));
        assert!(text.contains("t_seconds_bucket{server=\"a\\\"b\",le=\"0.00001\"} 1\n"));
        assert!(text.contains("t_seconds_bucket{server=\"a\\\"b\",le=\"0.00005\"} 2\n"));
        assert!(text.contains("t_seconds_bucket{server=\"a\\\"b\",le=\"10\"} 2\n"));
        assert!(text.contains("t_seconds_bucket{server=\"a\\\"b\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("t_seconds_count{server=\"a\\\"b\"} 3\n"));
        assert!(text.contains("t_seconds_sum{server=\"a\\\"b\"} 20.000035\n"));
    }

    #[test]
    fn a_family_past_its_cap_counts_new_label_sets_as_other() {
        let family: Family<2, Counter> = Family::new(["tool", "decision"]);
        for i in 0..MAX_SERIES + 50 {
            family.get([&format!("t{i}"), "allow"]).add(1);
        }
        // A label set seen before the cap keeps its own series.
        family.get(["t0", "allow"]).add(1);
        let snapshot = family.snapshot();
        assert_eq!(snapshot.len(), MAX_SERIES + 1);
        let other = snapshot
            .iter()
            .find(|(values, _)| values == &["other", "other"])
            .map(|(_, counter)| counter.get());
        assert_eq!(other, Some(50));
        assert_eq!(family.get(["t0", "allow"]).get(), 2);
    }

    #[test]
    fn unknown_methods_are_other_and_the_key_separator_cannot_be_forged() {
        let family: Family<2, Counter> = Family::new(["a", "b"]);
        family.get(["x\x1fy", "z"]).add(1);
        family.get(["x", "y\x1fz"]).add(1);
        let mut out = Exposition::default();
        family.render(&mut out, "t_total", "test");
        let text = out.finish();
        assert!(text.contains("t_total{a=\"x y\",b=\"z\"} 1\n"), "{text}");
        assert!(text.contains("t_total{a=\"x\",b=\"y z\"} 1\n"), "{text}");
    }
}
