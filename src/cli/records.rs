//! The audit records of the proxy's own events: its start (with each
//! relaxed sandbox and each plugin loaded), policy reloads, and plugin
//! breakers opening and closing.

use std::sync::Arc;

use crate::config::UpstreamSpec;
use crate::gateway::Gateway;
use crate::interceptors;

/// The `proxy_start` record (what runs: version, role, the config's digest,
/// the policy set in force) and a `sandbox_relaxed` record per server that
/// runs with less than the hardened profile.
pub(super) fn record_start(
    gateway: &Gateway,
    role: &str,
    config_sha256: Option<String>,
    policies: Option<&crate::interceptors::authz::PolicyEngine>,
    plugins: &[Arc<interceptors::Plugin>],
) {
    let mut start = crate::audit::AuditRecord::event("proxy_start", "allow");
    let store = policies.map(|engine| engine.current());
    start.policy_set = store.as_ref().map(|s| s.id.to_string());
    let config = gateway.config();
    start.detail = Some(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "role": role,
        "config_sha256": config_sha256,
        "policies": store.as_ref().map(|s| s.policy_count()),
        "servers": config.servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
    }));
    // One task commits them all, so `proxy_start` is first.
    let mut records = vec![start];
    records.extend(relaxed_records(config.servers.iter()));
    for plugin in plugins {
        let config = plugin.config();
        let mut record = crate::audit::AuditRecord::event("plugin_loaded", "allow");
        record.target = Some(config.name.clone());
        record.detail = Some(serde_json::json!({
            "path": config.path.display().to_string(),
            "sha256": plugin.sha256(),
            "methods": config.methods,
            "tools": config.tools,
            "on_error": match config.on_error {
                crate::config::OnError::Deny => "deny",
                crate::config::OnError::Continue => "continue",
            },
            "instance": match config.instance {
                crate::config::InstanceMode::Pooled => "pooled",
                crate::config::InstanceMode::PerCall => "per-call",
            },
            "timeout_ms": config.timeout.as_millis() as u64,
            "fuel": config.fuel,
            "memory_bytes": config.memory,
        }));
        records.push(record);
    }
    gateway.records().events(records);
}

/// A `sandbox_relaxed` record per server of `servers` that runs with less
/// than the hardened profile (at start, and as a reload starts servers).
pub(super) fn relaxed_records<'s>(
    servers: impl Iterator<Item = &'s crate::config::ServerConfig>,
) -> Vec<crate::audit::AuditRecord> {
    let mut records = Vec::new();
    for server in servers {
        let (relaxations, dangers): (Vec<String>, Vec<String>) = match &server.kind {
            UpstreamSpec::Process(_) => (
                vec!["unsandboxed: a process server runs with the proxy's own rights".into()],
                Vec::new(),
            ),
            UpstreamSpec::Container(spec) => (
                spec.sandbox
                    .relaxations()
                    .into_iter()
                    .map(|r| r.to_string())
                    .collect(),
                spec.sandbox
                    .dangers()
                    .into_iter()
                    .map(|d| d.to_string())
                    .collect(),
            ),
            UpstreamSpec::Remote(_) => (Vec::new(), Vec::new()),
        };
        if relaxations.is_empty() && dangers.is_empty() {
            continue;
        }
        let mut record = crate::audit::AuditRecord::event("sandbox_relaxed", "allow");
        record.server = Some(server.name.clone());
        record.detail = Some(serde_json::json!({
            "relaxations": relaxations,
            "dangers": dangers,
        }));
        records.push(record);
    }
    records
}

/// An error as a reload's record keeps it: at most 4 KiB.
pub(super) fn reason(text: &str) -> String {
    crate::protocol::cut(text, 4096).to_owned()
}

/// The `policy_reload` record of a reload: `allow` when applied, `error`
/// when refused (the diagnostics, cut to 4 KiB, as the reason).
pub(super) fn reload_record(
    reload: &crate::interceptors::authz::ReloadReport,
) -> crate::audit::AuditRecord {
    let decision = if reload.rejected.is_some() {
        "error"
    } else {
        "allow"
    };
    let mut record = crate::audit::AuditRecord::event("policy_reload", decision);
    record.policy_set = Some(reload.policy_set.to_string());
    record.reason = reload.rejected.as_deref().map(reason);
    record.detail = Some(serde_json::json!({
        "previous": &*reload.previous,
        "policies": reload.policies,
    }));
    record
}

/// The audit record of a plugin's breaker event.
pub(super) fn plugin_record(event: &interceptors::wasm::PluginEvent) -> crate::audit::AuditRecord {
    use interceptors::wasm::PluginEvent;
    match event {
        PluginEvent::BreakerOpened {
            plugin,
            failures,
            last_error,
            cooldown,
        } => {
            let mut record = crate::audit::AuditRecord::event("plugin_circuit_open", "error");
            record.target = Some(plugin.clone());
            record.decided_by = Some(format!("wasm:{plugin}"));
            record.reason = Some(format!(
                "{failures} failures in a row (last: {last_error}): not called for {} ms",
                cooldown.as_millis()
            ));
            record
        }
        PluginEvent::BreakerClosed { plugin } => {
            let mut record = crate::audit::AuditRecord::event("plugin_circuit_closed", "allow");
            record.target = Some(plugin.clone());
            record.decided_by = Some(format!("wasm:{plugin}"));
            record
        }
    }
}

/// Warns of each server of `servers` that runs with less than the hardened
/// profile (at start, and as a reload starts servers).
pub(super) fn announce_sandboxing<'s>(
    servers: impl Iterator<Item = &'s crate::config::ServerConfig>,
) {
    for server in servers {
        match &server.kind {
            UpstreamSpec::Process(spec) => tracing::warn!(
                server = %server.name,
                command = %spec.command,
                "UNSANDBOXED: process server runs with the proxy's own rights"
            ),
            UpstreamSpec::Container(spec) => {
                for relaxation in spec.sandbox.relaxations() {
                    tracing::warn!(server = %server.name, relaxation, "container sandbox relaxed");
                }
                for danger in spec.sandbox.dangers() {
                    tracing::warn!(server = %server.name, danger, "DANGEROUS: allowed by `allow_dangerous = true`");
                }
            }
            UpstreamSpec::Remote(_) => {}
        }
    }
}
