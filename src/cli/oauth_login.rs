//! `portcullis oauth login SERVER --client NAME`: a person at a desktop
//! signs a client of the proxy in to a remote server. The proxy registers
//! itself with the server's authorization server for a loopback redirect
//! URI (RFC 8252: `http://127.0.0.1:PORT/callback`), prints the link,
//! listens on that port for the answer, checks it (`state`, `iss`),
//! exchanges the code and keeps the tokens in the vault. `oauth revoke`
//! revokes them at the authorization server (RFC 7009) and forgets them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use tokio::sync::oneshot;

use crate::config::{Config, RemoteSpec, UpstreamSpec};
use crate::egress::HttpClient;
use crate::signin::page::page;
use crate::signin::vault::{MAX_NAME, Vault};
use crate::signin::{self, Discovered, FlowError, Registration};

/// The remote server `name` of `config`.
pub(super) fn remote<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a RemoteSpec> {
    let Some(found) = config.servers.iter().find(|s| s.name == name) else {
        bail!("no server `{}` in the config", name.escape_debug());
    };
    match &found.kind {
        UpstreamSpec::Remote(remote) => Ok(remote),
        kind => kind.sign_in().ok_or_else(|| {
            anyhow::anyhow!(
                "server `{}` is neither a `remote` server nor a container with `sign_in`: only those sign users in over OAuth",
                name.escape_debug()
            )
        }),
    }
}

/// What `server` (`remote`) asks for, learned as its settings expect, and
/// the client that learned it.
pub(super) async fn discovered(
    remote: &RemoteSpec,
    server: &str,
) -> anyhow::Result<(HttpClient, Discovered)> {
    let http = signin::discovery_client(remote)?;
    let found = signin::learn(&http, remote)
        .await
        .with_context(|| format!("server `{}`", server.escape_debug()))?;
    Ok((http, found))
}

/// Whether `user` can be a client of this proxy: a name of `[[clients]]`,
/// or any plain name where `[oauth]` says who clients are.
fn check_user(config: &Config, user: &str) -> anyhow::Result<()> {
    if user.is_empty() || user.len() > MAX_NAME || user.chars().any(char::is_control) {
        bail!("`--client` must be a client's name, without control characters");
    }
    if config.oauth.is_none() && !config.clients.iter().any(|c| c.name == user) {
        bail!(
            "no client `{}` in `[[clients]]`: a sign-in is kept for a client of the proxy",
            user.escape_debug()
        );
    }
    Ok(())
}

pub(super) async fn login(
    config: &Path,
    server: &str,
    user: &str,
    (wait, fixed): (Duration, Option<u16>),
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let remote = remote(&config, server)?;
    check_user(&config, user)?;
    let vault = Vault::of(&config)?;
    let (http, found) = discovered(remote, server).await?;
    // The desktop client registered last, if it is this issuer's and its
    // secret lives, on its port if that port is free; else a new port and
    // a new registration (kept beside the ones before, which tokens issued
    // to them still need).
    let kept: Option<Registration> = vault
        .get_client::<Registration>(server, signin::DESKTOP)?
        .filter(|client| client.issuer == found.issuer && !client.expired());
    let port = kept
        .as_ref()
        .and_then(|client| reqwest::Url::parse(&client.redirect_uri).ok())
        .and_then(|url| url.port());
    let bind = |port: u16| tokio::net::TcpListener::bind(("127.0.0.1", port));
    let listener = match (fixed, port) {
        (Some(fixed), _) => bind(fixed)
            .await
            .with_context(|| format!("listening on 127.0.0.1:{fixed} (`--port`)"))?,
        (None, Some(kept)) => match bind(kept).await {
            Ok(listener) => listener,
            Err(_) => bind(0).await?,
        },
        (None, None) => bind(0).await?,
    };
    let address: SocketAddr = listener.local_addr()?;
    let redirect = format!("http://127.0.0.1:{}/callback", address.port());
    let given = signin::Ways::of(remote, &config.vault).given;
    let client = match (given, kept.filter(|client| client.redirect_uri == redirect)) {
        // The operator's client first, as for links (its redirect URIs
        // there take a loopback address on any port, RFC 8252).
        (Some(given), _) => signin::client::given_client(given, &found, &redirect)
            .map_err(|reason| anyhow::anyhow!("the server's `sign_in.client`: {reason}"))?,
        (None, Some(client)) => client,
        (None, None) if found.registration_endpoint.is_none() => {
            bail!("{}", signin::client::no_way(&found))
        }
        (None, None) => {
            let client = signin::register(&http, &found, &redirect).await?;
            signin::keep_registration(&vault, server, signin::DESKTOP, &client)?;
            client
        }
    };
    let started = signin::start(&found, &client)?;
    let issuer = signin::pending::issuer_shown(&found);
    println!(
        "To sign `{}` in to `{}` at the authorization server {issuer}, open this link in a browser:\n\n  {}\n",
        user.escape_debug(),
        server.escape_debug(),
        started.link
    );
    eprintln!(
        "Waiting up to {} s for the answer at {redirect}…",
        wait.as_secs()
    );
    let (done, finished) = oneshot::channel();
    let pending = Arc::new(Pending {
        found,
        client,
        state: started.state,
        verifier: started.verifier,
        http,
        vault,
        server: server.to_owned(),
        user: user.to_owned(),
        done: Mutex::new(Some(done)),
    });
    let router = axum::Router::new()
        .route("/callback", axum::routing::get(callback))
        .with_state(pending);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let outcome = tokio::select! {
        outcome = finished => outcome.unwrap_or_else(|_| Err("the sign-in's listener stopped".into())),
        () = tokio::time::sleep(wait) => Err(format!("no answer came back within {} s", wait.as_secs())),
    };
    let _ = stop.send(());
    // A connection left half-sent (a local process holding it open) does
    // not keep the command from ending.
    let abort = serving.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .is_err()
    {
        abort.abort();
    }
    match outcome {
        Ok(summary) => {
            println!("{summary}");
            Ok(())
        }
        Err(reason) => bail!("the sign-in failed: {reason}"),
    }
}

/// A sign-in waiting for its answer.
struct Pending {
    found: Discovered,
    client: Registration,
    state: String,
    verifier: String,
    http: HttpClient,
    vault: Vault,
    server: String,
    user: String,
    /// Taken by the first answer for this sign-in: one answer only.
    done: Mutex<Option<oneshot::Sender<Result<String, String>>>>,
}

/// What comes back to the redirect URI.
async fn callback(
    State(pending): State<Arc<Pending>>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let answer = signin::answered(&pending.found, &pending.state, &query);
    if let Err(FlowError::OtherState) = answer {
        // Not this sign-in's: someone else's link, or a forged one. The
        // sign-in goes on waiting for its own.
        return page(
            StatusCode::BAD_REQUEST,
            "This answer is not for the sign-in this terminal started. Nothing was done.",
            None,
        );
    }
    let Some(done) = pending
        .done
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return page(StatusCode::GONE, "This sign-in is already finished.", None);
    };
    let outcome = match answer {
        Ok(code) => finish(&pending, &code).await,
        Err(err) => Err(err.to_string()),
    };
    let (status, text) = match &outcome {
        Ok(summary) => (
            StatusCode::OK,
            format!("{summary} You may close this page."),
        ),
        Err(reason) => (
            StatusCode::BAD_REQUEST,
            format!("The sign-in failed: {reason}"),
        ),
    };
    let _ = done.send(outcome);
    page(status, &text, None)
}

/// The code exchanged, and the tokens kept: what to tell the person.
async fn finish(pending: &Pending, code: &str) -> Result<String, String> {
    let tokens = signin::exchange(
        &pending.http,
        &pending.found,
        &pending.client,
        code,
        &pending.verifier,
    )
    .await
    .map_err(|err| err.to_string())?;
    pending
        .vault
        .put_held(&pending.server, &pending.user, &tokens)
        .await
        .map_err(|err| err.to_string())?;
    let until = tokens
        .expires_at
        .and_then(|at| i64::try_from(at).ok())
        .and_then(|at| jiff::Timestamp::from_second(at).ok())
        .map_or_else(|| "no expiry said".to_owned(), |at| format!("until {at}"));
    Ok(format!(
        "Signed `{}` in to `{}` ({until}{}).",
        pending.user.escape_debug(),
        pending.server.escape_debug(),
        if tokens.refresh_token.is_some() {
            ", refreshable"
        } else {
            ""
        }
    ))
}

/// `oauth revoke`: the user's tokens revoked at the authorization server,
/// then forgotten; with `local_only`, forgotten without asking it.
pub(super) async fn revoke(
    config: &Path,
    server: &str,
    user: &str,
    local_only: bool,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let remote = remote(&config, server)?;
    let vault = Vault::of(&config)?;
    // Held to the end: a proxy's refresh cannot write the sign-in back.
    let _held = vault.hold(server, user).await?;
    let Some(tokens) = vault.get(server, user)? else {
        bail!(
            "no sign-in of `{}` to `{}` is kept",
            user.escape_debug(),
            server.escape_debug()
        );
    };
    if !local_only {
        let (http, found) = discovered(remote, server).await?;
        // Only to the authorization server that issued the tokens, as the
        // client they were issued to.
        let ways = signin::Ways::of(remote, &config.vault);
        let client = signin::registration(&vault, server, &tokens, (&found, ways))
            .map_err(anyhow::Error::msg)?
            .context("the client these tokens were issued to is no longer known: `--local-only` forgets them without revoking")?;
        if let Some(refresh) = &tokens.refresh_token {
            signin::revoke(&http, &found, &client, refresh, "refresh_token").await?;
        }
        signin::revoke(&http, &found, &client, &tokens.access_token, "access_token").await?;
    }
    vault.remove(server, user)?;
    println!(
        "{} `{}`'s sign-in to `{}`.",
        if local_only {
            "Forgot (not revoked)"
        } else {
            "Revoked and forgot"
        },
        user.escape_debug(),
        server.escape_debug()
    );
    Ok(())
}
