//! Container servers: cold start and warm calls, in one run, against
//! baselines measured in the same run:
//! - cold start: a `tools/call` to a stopped (idle) container server (with
//!   `stdio = "fifo"`, the default when a bridge is configured), until
//!   its reply; against the engine's own start, `docker run --rm -i IMAGE`
//!   with the same initialize + call on its stdin until the call's reply;
//! - warm calls: `tools/call` round trips to a running container server,
//!   against the same server as a `process` upstream, and against a client
//!   attached to the same container image directly through the engine (no
//!   proxy): the share of Docker's own stdio path (client → dockerd →
//!   containerd-shim → server, and back).
//!
//! Run: `cargo bench --bench containers` (options after `--`: `--starts N`,
//! `--calls N`). Needs the Docker engine; builds the example image first
//! with `scripts/build-test-image.sh`.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod common;

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, RemoveContainerOptions,
};
use common::{
    INIT, INITIALIZED, StdioClient, bare_engine_start, build_image, measure_stdio, print_ms_table,
    print_table, stats,
};
use futures_util::StreamExt;
use portcullis::upstream::container::{self, LABEL_SERVER};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

fn main() {
    let mut starts = 10usize;
    let mut calls = 2000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--starts" => starts = args.next().and_then(|n| n.parse().ok()).unwrap_or(starts),
            "--calls" => calls = args.next().and_then(|n| n.parse().ok()).unwrap_or(calls),
            _ => {} // cargo bench passes `--bench`
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(starts, calls));
}

/// `calls` echo round trips over the engine's attach stream, no proxy.
async fn direct_attach(docker: &Docker, image: &str, calls: usize) -> common::Stats {
    let created = docker
        .create_container(
            None::<CreateContainerOptions>,
            ContainerCreateBody {
                image: Some(image.to_owned()),
                cmd: Some(vec!["--name".into(), "direct".into()]),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                open_stdin: Some(true),
                stdin_once: Some(true),
                tty: Some(false),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    auto_remove: Some(true),
                    log_config: Some(HostConfigLogConfig {
                        typ: Some("none".into()),
                        config: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let AttachContainerResults { output, mut input } = docker
        .attach_container(
            &created.id,
            Some(AttachContainerOptions {
                stdin: true,
                stdout: true,
                stderr: true,
                stream: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    docker.start_container(&created.id, None).await.unwrap();
    let stdout = output.filter_map(|item| async move {
        match item {
            Ok(LogOutput::StdOut { message }) => Some(Ok::<_, std::io::Error>(message)),
            Ok(_) => None,
            Err(err) => Some(Err(std::io::Error::other(err.to_string()))),
        }
    });
    let mut lines = BufReader::new(tokio_util::io::StreamReader::new(Box::pin(stdout))).lines();
    input
        .write_all(format!("{INIT}\n{INITIALIZED}\n").as_bytes())
        .await
        .unwrap();
    let mut samples = Vec::with_capacity(calls);
    let mut started = Instant::now();
    for id in 0..calls + calls / 10 {
        if id == calls / 10 {
            started = Instant::now();
        }
        let t = Instant::now();
        let call = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"hello\"}}}}}}\n",
            id + 1
        );
        input.write_all(call.as_bytes()).await.unwrap();
        input.flush().await.unwrap();
        let want = format!("\"id\":{}", id + 1);
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the server answers");
            if line.contains(&want) {
                break;
            }
        }
        if id >= calls / 10 {
            samples.push(t.elapsed());
        }
    }
    let elapsed = started.elapsed();
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    stats("same image, attached directly (no proxy)", samples, elapsed)
}

async fn containers_of(docker: &Docker, server: &str) -> usize {
    container::labelled(docker, &format!("{LABEL_SERVER}={server}"))
        .await
        .unwrap()
        .len()
}

async fn run(starts: usize, calls: usize) {
    let image = build_image();
    let portcullis = env!("CARGO_BIN_EXE_portcullis");
    let example = env!("CARGO_BIN_EXE_portcullis-example-server");
    let docker = Docker::connect_with_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    let bridge = format!(
        "{}/target/static/portcullis-bridge",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::write(
        &config,
        format!(
            "[proxy]\nbridge = {bridge:?}\n\n[[clients]]\nname = \"bench\"\n\n\
             [[servers]]\nname = \"cold\"\ncontainer = {{ image = {image:?}, args = [\"--name\", \"cold\"], idle_timeout = \"1s\" }}\n\n\
             [[servers]]\nname = \"warm\"\ncontainer = {{ image = {image:?}, args = [\"--name\", \"warm\"], start = \"eager\", stdio = \"attach\" }}\n\n\
             [[servers]]\nname = \"fifo\"\ncontainer = {{ image = {image:?}, args = [\"--name\", \"fifo\"], start = \"eager\", stdio = \"fifo\" }}\n\n\
             [[servers]]\nname = \"local\"\nprocess = {{ command = {example:?}, args = [\"--name\", \"local\"] }}\n"
        ),
    )
    .unwrap();
    let proxy = || {
        let mut command = Command::new(portcullis);
        command
            .args(["stdio", "--config"])
            .arg(&config)
            .args(["--client", "bench"]);
        command
    };

    // Warm-up of the engine and the page cache, then the bare baseline.
    bare_engine_start(&image).await;
    let mut bare = Vec::new();
    for _ in 0..starts {
        bare.push(bare_engine_start(&image).await);
    }

    // Cold starts through the proxy: wait until the idle server's container
    // is gone, then time one call.
    let mut client = StdioClient::spawn(proxy()).await;
    let mut cold = Vec::new();
    for _ in 0..=starts {
        let deadline = Instant::now() + Duration::from_secs(60);
        while containers_of(&docker, "cold").await > 0 {
            assert!(Instant::now() < deadline, "the idle server was not stopped");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = Instant::now();
        client
            .request(
                "tools/call",
                json!({"name": "cold__echo", "arguments": {"text": "hello"}}),
            )
            .await;
        cold.push(started.elapsed());
    }
    cold.remove(0); // the first one includes the proxy's own warm-up
    client.finish().await;

    let warm = measure_stdio(
        "container server, warm, `stdio = \"attach\"`",
        proxy(),
        "warm__echo",
        calls,
    )
    .await;
    let process = measure_stdio("process server (stdio)", proxy(), "local__echo", calls).await;
    let fifo = measure_stdio(
        "container server, warm, `stdio = \"fifo\"`",
        proxy(),
        "fifo__echo",
        calls,
    )
    .await;
    let attached = direct_attach(&docker, &image, calls).await;

    let bare = stats(
        "engine: `docker run --rm -i` + call",
        bare,
        Duration::from_secs(1),
    );
    let cold = stats(
        "proxy: cold start + call (`stdio = \"fifo\"`)",
        cold,
        Duration::from_secs(1),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    print_ms_table(
        &format!("cold start ({starts} runs)"),
        "vs engine p50",
        &[&bare, &cold],
        &bare,
    );
    print_table(
        &format!("warm calls ({calls} each)"),
        "vs process p50",
        &[&process, &attached, &warm, &fifo],
        &process,
    );
    println!(
        "\ncold start / engine start p50: {:.2}× (goal ≤ 1.5×); warm container / process p50: {:.2}× attached, {:.2}× through FIFOs (goal ≤ 1.5×); through the proxy vs attached directly: {:.2}×",
        ms(cold.p50) / ms(bare.p50),
        us(warm.p50) / us(process.p50),
        us(fifo.p50) / us(process.p50),
        us(warm.p50) / us(attached.p50)
    );
}
