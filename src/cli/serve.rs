//! `portcullis serve` and `portcullis stdio`: the audit log opened, the
//! gateway built and started, its events recorded, then the transports
//! served until a signal.

use std::sync::Arc;

use anyhow::Context as _;

use super::launch::{Traced, build_gateway, start};
use super::records::{plugin_record, record_start, reload_record};
use super::{audit_keys, pins};
use crate::audit::{Audit, SledStorage};
use crate::chain::ClientIdentity;
use crate::config::{Config, Durability};
use crate::downstream;
use crate::gateway::Gateway;
use crate::interceptors;

/// Serves MCP on `[proxy] listen` and/or to one client on stdio, until a
/// signal (or, with stdio only, the end of stdin).
pub(super) async fn serve(
    (config, before): (Config, Option<super::reload::Stamp>),
    stdio_client: Option<ClientIdentity>,
) -> anyhow::Result<()> {
    // The config's files as they were read (the config file's as it was
    // before): an edit made since is reloaded once the watch begins.
    let read = super::reload::stamps_of(&config, before);
    super::records::announce_sandboxing(config.servers.iter());
    let listen = config.proxy.listen;
    // The signal handlers come first: a SIGTERM while servers start must
    // still remove every container that was started.
    let signal = shutdown_signal();
    tokio::pin!(signal);
    // The audit log opens first: no exchange happens that it cannot record.
    // One store (and hash chain) per proxy role: several stdio proxies may
    // share a config, each with its own log.
    let role = match (&config.proxy.listen, &stdio_client) {
        (None, Some(client)) => format!("stdio-{}", client.name),
        _ => "serve".to_owned(),
    };
    let audit = open_audit(&config, &role)?
        .with_profile(config.profile.as_ref().map(|profile| profile.name.as_str()));
    // What a reload reads the config as (`stdio` serves no HTTP, whatever
    // the file says).
    let source = super::reload::Source {
        file: config.file.clone(),
        profile: config.profile.as_ref().map(|profile| profile.name.clone()),
        listen_off: stdio_client.is_some() && listen.is_none(),
    };
    let config_sha256 = super::config_sha256(&config.file);
    let (gateway, events, policies, pinning, plugins) =
        build_gateway(config, Some(audit), Traced::Yes)?;
    gateway.reloads().set_enforced(crate::gateway::Enforced {
        config_sha256: config_sha256.clone(),
        restart_required: Vec::new(),
    });
    record_start(
        &gateway,
        &role,
        config_sha256,
        policies.as_deref(),
        &plugins,
    );
    record_events(&gateway, policies.as_ref(), pinning.as_ref(), &plugins);
    tokio::select! {
        () = start(&gateway, events) => {}
        () = &mut signal => {
            tracing::info!("shutting down during start-up");
            gateway.stop().await;
            return Ok(());
        }
    }
    super::reload::watch(gateway.clone(), source, read);
    // Sign-ins to servers this config named and no longer does.
    gateway.revoke_removed_while_stopped();
    let shipping = match ship_audit(&gateway) {
        Ok(shipping) => shipping,
        Err(err) => {
            gateway.stop().await;
            return Err(err);
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = listen {
        let gateway = gateway.clone();
        // For the console's pages on policies and pins.
        let enforcement = downstream::http::Enforcement { policies, pinning };
        tasks.spawn(async move { downstream::http::serve(gateway, addr, enforcement).await });
    }
    let stdio_only = listen.is_none();
    if let Some(client) = stdio_client {
        let gateway = gateway.clone();
        tasks.spawn(async move { downstream::stdio::serve(gateway, client).await });
    }
    let result = tokio::select! {
        () = &mut signal => {
            tracing::info!("shutting down");
            Ok(())
        }
        // With stdio only, the end of stdin ends the proxy; with HTTP, a
        // transport ending means it failed.
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) if stdio_only => Ok(()),
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(anyhow::Error::new(err)),
            Err(err) => Err(anyhow::anyhow!("a transport task failed: {err}")),
        },
    };
    gateway.stop().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    // After `proxy_stop`: the shipper ships it too, if the database
    // answers in time.
    if let Some((stop, shipper)) = shipping {
        stop.cancel();
        let _ = tokio::time::timeout(SHIP_LAST_CALL * 2, shipper).await;
    }
    result
}

/// How long a stopping proxy gives its shipper to ship its last records.
const SHIP_LAST_CALL: std::time::Duration = std::time::Duration::from_secs(5);

/// `[audit.ship]`: ships this role's store to the fleet's database as
/// records are written, until the token is cancelled.
fn ship_audit(
    gateway: &crate::gateway::Gateway,
) -> anyhow::Result<
    Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
> {
    let config = gateway.config();
    let (Some(ship), Some(audit)) = (&config.audit.ship, gateway.records().audit()) else {
        return Ok(None);
    };
    let Some(reader) = audit.reader() else {
        return Ok(None);
    };
    // The store's own name (`serve`, or `stdio-NAME-2` beside another
    // proxy's), which its signed checkpoints name too.
    let store = reader.store_name();
    let database = crate::audit::fleet::Database::of(ship)
        .with_context(|| format!("{}: `[audit.ship]`", config.file.display()))?;
    // The shipped watermark retention reads, shared with the metrics.
    let gauges = crate::metrics::Shipping {
        shipped: audit.shipped().unwrap_or_default(),
        ..crate::metrics::Shipping::default()
    };
    if let Some(metrics) = gateway.records().metrics() {
        let _ = metrics.shipping.set(gauges.clone());
    }
    tracing::info!(replica = %ship.replica, store = %store, "shipping the audit log to the fleet's database");
    let shipper = crate::audit::fleet::Shipper {
        database,
        reader: reader.clone(),
        replica: ship.replica.clone(),
        store,
        batch: ship.batch,
        written: audit.written(),
        shipped: gauges.shipped,
        failing: gauges.failing,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(shipper.run(stop.clone(), SHIP_LAST_CALL));
    Ok(Some((stop, task)))
}

/// The audit log of this proxy role, opened (and its keys loaded) before
/// anything else, in a data folder checked to be the user's alone.
pub(super) fn open_audit(config: &Config, role: &str) -> anyhow::Result<Audit> {
    // The data folder is checked before anything in it is opened: one that
    // another user owns or may write to is refused.
    let narrowed = crate::private_dir::prepare(&config.proxy.data_dir)
        .with_context(|| format!("{}: `proxy.data_dir`", config.file.display()))?;
    if !narrowed.is_empty() {
        tracing::warn!(
            data_dir = %config.proxy.data_dir.display(),
            count = narrowed.len(),
            "closed the data folder to other users (it was readable by them): folders are now 0700, files 0600"
        );
    }
    let audit_dir = config.proxy.data_dir.join("audit");
    let durability = config.audit.durability;
    let flush_every = match durability {
        Durability::Durable => None,
        Durability::Buffered => Some(std::time::Duration::from_millis(10)),
    };
    let cannot = || format!("{}: cannot open the audit log", config.file.display());
    let store = SledStorage::open_for(&audit_dir, role, flush_every).with_context(cannot)?;
    let sealing = audit_keys::sealing(config, &store).with_context(cannot)?;
    let shipped = sealing.shipped.clone();
    if sealing.seal.is_keyed() || sealing.signer.is_some() {
        tracing::info!(
            keyed = sealing.seal.is_keyed(),
            signed_checkpoints = sealing.signer.is_some(),
            "the audit chain is keyed and/or its head signed"
        );
    }
    Ok(Audit::start_sealed(
        store,
        durability == Durability::Durable,
        config.audit.retention,
        sealing,
    )
    .with_context(cannot)?
    .shipping_to(shipped))
}

/// Plugin, pin and policy events go to the audit log as they happen; pins
/// and policies are watched for changes.
pub(super) fn record_events(
    gateway: &Arc<Gateway>,
    policies: Option<&Arc<interceptors::PolicyEngine>>,
    pinning: Option<&Arc<interceptors::Pinning>>,
    plugins: &[Arc<interceptors::Plugin>],
) {
    for plugin in plugins {
        // Breaker events go to the audit log.
        let recorder = gateway.clone();
        forward_events(gateway, plugin.subscribe(), "plugin", move |event| {
            recorder.records().event(plugin_record(&event));
        });
    }
    if let Some(pinning) = pinning {
        // Pin events go to the audit log; approvals reach the sessions as
        // `tools/list_changed` (a withheld tool may be back).
        let recorder = gateway.clone();
        let separator = recorder.config().proxy.namespace_separator.clone();
        forward_events(gateway, pinning.subscribe(), "pin", move |events| {
            let reloaded = events.iter().any(|event| {
                matches!(
                    event,
                    crate::interceptors::pinning::PinEvent::Reloaded { .. }
                )
            });
            if reloaded {
                recorder.announce(crate::protocol::List::Tools);
            }
            // A batch's records are committed in order, by one task.
            recorder.records().events(
                events
                    .iter()
                    .map(|event| pins::record(event, &separator))
                    .collect(),
            );
        });
        let poll = gateway.config().proxy.policy_poll;
        tokio::spawn(pinning.clone().watch(poll, gateway.shutdown_token()));
    }
    match policies {
        Some(engine) => {
            let mut reloads = engine.subscribe();
            let recorder = gateway.clone();
            tokio::spawn(async move {
                use crate::protocol::List;
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    let applied = match reloads.recv().await {
                        Ok(reload) => {
                            recorder.records().event(reload_record(&reload));
                            reload.rejected.is_none()
                        }
                        // Reloads came faster than they were recorded:
                        // some set may have been applied meanwhile.
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(
                                missed,
                                "policy reloads not recorded: they came too fast"
                            );
                            true
                        }
                        Err(RecvError::Closed) => break,
                    };
                    // What each client may list may have changed: it is
                    // told, as of a server's list change.
                    if applied {
                        for kind in [List::Tools, List::Prompts, List::Resources] {
                            recorder.announce(kind);
                        }
                    }
                }
            });
            let store = engine.current();
            tracing::info!(
                dir = %engine.dir().display(),
                policy_set = %store.id,
                policies = store.policy_count(),
                "policies loaded"
            );
            if store.policy_count() == 0 {
                tracing::warn!("the policy folder has no policies: every request is denied");
            }
            let links = gateway.config().vault.public_url.is_some()
                && gateway
                    .config()
                    .servers
                    .iter()
                    .any(|server| server.kind.sign_in().is_some());
            if links && !store.declares(crate::interceptors::authz::Action::SignIn) {
                tracing::warn!(
                    "the policy schema does not declare the action `sign_in`: no user is given a link to sign in (declare it as policies/schema.cedarschema does, and permit it)"
                );
            }
            let poll = gateway.config().proxy.policy_poll;
            tokio::spawn(engine.clone().watch(poll, gateway.shutdown_token()));
        }
        None => tracing::warn!(
            "no `[proxy] policies`: every client may use every tool, prompt and resource"
        ),
    }
}

pub(super) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Hands each event of a broadcast to `on_event` until the sender is gone;
/// events lost to a full channel are logged loudly (`what`: whose events).
/// Hands each event of `events` to `on_event` as it comes, until the proxy
/// is told to stop; then those already sent, and ends. The proxy's stop
/// waits for it before `proxy_stop` is recorded (an event sent just before
/// the stop, a tool flagged by the last call, is not lost).
fn forward_events<E: Clone + Send + 'static>(
    gateway: &Arc<Gateway>,
    mut events: tokio::sync::broadcast::Receiver<E>,
    what: &'static str,
    mut on_event: impl FnMut(E) + Send + 'static,
) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let shutdown = gateway.shutdown_token();
    gateway.records().keep_until_stop(async move {
        loop {
            let received = tokio::select! {
                biased;
                received = events.recv() => received,
                () = shutdown.cancelled() => break,
            };
            match received {
                Ok(event) => on_event(event),
                Err(RecvError::Lagged(missed)) => {
                    tracing::error!(missed, "AUDIT: {what} events were dropped");
                }
                Err(RecvError::Closed) => return,
            }
        }
        loop {
            match events.try_recv() {
                Ok(event) => on_event(event),
                Err(TryRecvError::Lagged(missed)) => {
                    tracing::error!(missed, "AUDIT: {what} events were dropped");
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    });
}
