//! Building the gateway from a config, and starting its servers: shared by
//! `serve` (and `stdio`) and `tools list`.

use std::sync::Arc;

use anyhow::Context as _;

use crate::audit::Audit;
use crate::config::{Config, UpstreamSpec};
use crate::gateway::{Gateway, Wiring};
use crate::interceptors;

/// Containers that a killed proxy left on this host are removed before any
/// new one starts.
async fn remove_orphaned_containers(config: &Config) {
    let any = config
        .servers
        .iter()
        .any(|server| matches!(server.kind, UpstreamSpec::Container(_)));
    if !any {
        return;
    }
    let fifos =
        crate::upstream::container::remove_orphaned_fifos(&config.proxy.data_dir.join("run"));
    if fifos > 0 {
        tracing::warn!(
            count = fifos,
            "removed FIFO folders left behind by a proxy that died"
        );
    }
    match crate::upstream::container::remove_orphans().await {
        Ok(0) => {}
        Ok(count) => tracing::warn!(count, "removed containers left behind by a proxy that died"),
        Err(err) => tracing::warn!(error = err, "cannot look for orphaned containers"),
    }
}

/// A gateway with its servers started, for a command that asks it
/// something (no audit log).
pub(super) async fn start_gateway(config: Config) -> anyhow::Result<Arc<Gateway>> {
    let (gateway, events, _, _, _) = build_gateway(config, None, Traced::No)?;
    start(&gateway, events).await;
    Ok(gateway)
}

pub(super) type Built = (
    Arc<Gateway>,
    tokio::sync::mpsc::Receiver<crate::upstream::UpstreamEvent>,
    Option<Arc<interceptors::PolicyEngine>>,
    Option<Arc<interceptors::Pinning>>,
    Vec<Arc<interceptors::Plugin>>,
);

/// The gateway and its chain; fails (before any server starts) when an
/// interceptor cannot be built, such as a policy folder with errors.
pub(super) fn build_gateway(
    config: Config,
    audit: Option<Audit>,
    traced: Traced,
) -> anyhow::Result<Built> {
    let config = Arc::new(config);
    let built = interceptors::build_chain(&config).with_context(|| {
        format!(
            "{}: cannot build the interceptor chain",
            config.file.display()
        )
    })?;
    let traces = match traced {
        Traced::Yes => export_traces(&config)?,
        Traced::No => None,
    };
    let wiring = Wiring {
        scrubber: Some(built.scrubber),
        keep_arguments: built.keep_arguments,
        access: Some(built.access),
        shared_places: built.shared_places,
        traces,
    };
    let (gateway, events) = Gateway::new(config, built.chain, audit, wiring);
    Ok((
        gateway,
        events,
        built.policies,
        built.pinning,
        built.plugins,
    ))
}

/// Starts the servers, once the orphans of a killed proxy are gone.
pub(super) async fn start(
    gateway: &Arc<Gateway>,
    events: tokio::sync::mpsc::Receiver<crate::upstream::UpstreamEvent>,
) {
    remove_orphaned_containers(gateway.config()).await;
    gateway.start(events).await;
}

/// Whether a gateway exports traces (`serve` does, when
/// `[observability.traces]` asks; the CLI's one-shot commands do not).
pub(super) enum Traced {
    Yes,
    No,
}

/// The tracer and its exporter, when `[observability.traces]` asks.
fn export_traces(
    config: &Config,
) -> anyhow::Result<Option<(crate::traces::Tracer, crate::traces::Export)>> {
    let Some(traces) = &config.observability.traces else {
        return Ok(None);
    };
    let (tracer, queue) = crate::traces::Tracer::new(traces.sample_ratio);
    let exporter = crate::traces::Exporter::new(traces, tracer.counters())
        .with_context(|| format!("{}: cannot export traces", config.file.display()))?;
    tracing::info!(endpoint = %traces.endpoint, sample_ratio = traces.sample_ratio, "exporting traces over OTLP/HTTP");
    Ok(Some((tracer, exporter.spawn(queue))))
}
