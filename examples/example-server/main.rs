//! `portcullis-example-server`: the example MCP server behind the quickstart and the
//! integration tests, built on rmcp.
//!
//! It serves MCP over stdio by default, or streamable HTTP at `/mcp` with
//! `--http ADDR`. Its tools exercise most of the protocol (progress, cancellation,
//! sampling, elicitation, roots, logging, list changes, resource updates, crashes);
//! see `tools.rs` for the list. Logs go to stderr only (`RUST_LOG` sets the filter).

mod outside;
mod sandbox;
mod server;
mod tasks;
mod tools;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use clap::Parser;
use rmcp::{
    ServiceExt as _,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService, stdio,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::server::ExampleServer;

/// An example MCP server for trying out and testing Portcullis.
#[derive(Debug, Parser)]
#[command(name = "portcullis-example-server", version)]
struct Args {
    /// Serve MCP streamable HTTP at http://ADDR/mcp instead of stdio (port 0 picks a
    /// free port; the bound address is printed to stderr as `listening on ADDR`).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,

    /// The server's name: its serverInfo.name, and the prefix of `echo` replies.
    #[arg(long, value_name = "NAME", default_value = "example")]
    name: String,

    /// Serve tool TOOL with this description instead of its own (repeatable):
    /// a server whose tool definitions change between runs, for pinning.
    #[arg(long, value_name = "TOOL=TEXT")]
    describe: Vec<String>,

    /// Serve the tool `env_digest`, which replies with the SHA-256 of this
    /// environment variable (a token given in the environment, compared by
    /// tests without being shown).
    #[arg(long, value_name = "NAME")]
    report_env: Option<String>,

    /// Serve the tool `env_value`, which replies with this environment
    /// variable's value: a server that hands out a credential it holds, for
    /// tests of what the proxy lets reach the client and other servers.
    #[arg(long, value_name = "NAME")]
    reveal_env: Option<String>,

    /// Serve the tool `fetch_page`, which answers this text for any URL:
    /// a page an outsider wrote (flow policies' untrusted data).
    #[arg(long, value_name = "TEXT")]
    page: Option<String>,

    /// Serve the tool `send`, which appends each message it is sent to this
    /// file as a JSON line: a way out of the proxy (a sink) whose test
    /// reads what really left.
    #[arg(long, value_name = "PATH")]
    outbox: Option<std::path::PathBuf>,

    /// Print `NAME=VALUE` of this environment variable to stderr at start:
    /// an image that logs its environment, for tests of what the proxy's
    /// own log keeps of it.
    #[arg(long, value_name = "NAME")]
    print_env: Option<String>,

    /// Speak MCP 2026-07-28 alone: `initialize` is refused, each request must
    /// carry its version and capabilities in `params._meta`.
    #[arg(long)]
    stateless: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    let server = ExampleServer::new(args.name, args.stateless);
    if let Some(var) = &args.print_env {
        eprintln!("{var}={}", std::env::var(var).unwrap_or_default());
    }
    if let Some(var) = &args.report_env {
        server.add_env_tool(var, false);
    }
    if let Some(var) = &args.reveal_env {
        server.add_env_tool(var, true);
    }
    if let Some(page) = &args.page {
        server.add_route(outside::page_tool(page));
    }
    if let Some(outbox) = &args.outbox {
        server.add_route(outside::send_tool(outbox));
    }
    for change in &args.describe {
        let Some((tool, text)) = change.split_once('=') else {
            anyhow::bail!("--describe {change:?}: expected TOOL=TEXT");
        };
        if !server.set_description(tool, text) {
            anyhow::bail!("--describe {change:?}: there is no tool {tool}");
        }
    }
    match args.http {
        None => serve_stdio(server).await,
        Some(addr) => serve_http(server, addr).await,
    }
}

fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .init();
}

async fn serve_stdio(server: ExampleServer) -> anyhow::Result<()> {
    let running = server
        .serve(stdio())
        .await
        .context("MCP session over stdio failed to start")?;
    let reason = running.waiting().await?;
    tracing::info!(?reason, "stdio session ended");
    Ok(())
}

async fn serve_http(server: ExampleServer, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local_addr = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let mut config =
        StreamableHttpServerConfig::default().with_cancellation_token(shutdown.child_token());
    if !local_addr.ip().is_loopback() {
        // rmcp only accepts loopback `Host` headers by default (DNS rebinding
        // protection); bound elsewhere (e.g. in a container) accept any host.
        config = config.disable_allowed_hosts();
    }
    let service = StreamableHttpService::new(
        move || Ok(server.new_session()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = axum::Router::new().nest_service("/mcp", service);

    eprintln!("listening on {local_addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                // No signal handler: run until killed.
                std::future::pending::<()>().await;
            }
            shutdown.cancel();
        })
        .await
        .context("HTTP server failed")
}
