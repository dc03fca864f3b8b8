//! rmcp clients at 2026-07-28 and their `subscriptions/listen` streams,
//! as several test files use them.

use std::time::Duration;

use serde_json::{Value, json};

/// An rmcp client over `transport` that speaks 2026-07-28 only (no
/// handshake to fall back to).
pub async fn modern_rmcp<T, E, A>(
    transport: T,
) -> rmcp::service::RunningService<rmcp::RoleClient, ()>
where
    T: rmcp::transport::IntoTransport<rmcp::RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    use rmcp::model::ProtocolVersion;
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt as _};
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::LATEST],
    };
    ().serve_with_lifecycle(transport, lifecycle)
        .await
        .expect("connect at 2026-07-28")
}

/// rmcp's streamable HTTP transport to `url` with the bearer `token`.
pub fn http_transport(
    url: &str,
    token: &str,
) -> rmcp::transport::StreamableHttpClientTransport<reqwest::Client> {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    rmcp::transport::StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token),
    )
}

/// `portcullis stdio` of `proxy` as rmcp's child-process transport.
pub fn stdio_transport(proxy: &super::TestProxy) -> rmcp::transport::TokioChildProcess {
    let (transport, _) = rmcp::transport::TokioChildProcess::builder(proxy.stdio_command())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn portcullis stdio");
    transport
}

/// Calls `name` with `arguments` through an rmcp client.
pub async fn call_tool(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    name: &str,
    arguments: Value,
) {
    let params = rmcp::model::CallToolRequestParams::new(name.to_owned())
        .with_arguments(arguments.as_object().cloned().unwrap_or_default());
    client
        .call_tool(params)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// The next notification on a listen stream (bounded).
pub async fn next_notification(
    subscription: &mut rmcp::service::Subscription,
) -> rmcp::model::ServerNotification {
    tokio::time::timeout(Duration::from_secs(20), subscription.next())
        .await
        .expect("a notification in time")
        .expect("the stream is up")
        .expect("a notification")
}

/// A listen stream over rmcp at LATEST, through the proxy to the example
/// server named `server`: what it was granted, then the list
/// changes and resource updates it asked for, tagged with its id, and
/// nothing it did not ask for.
pub async fn listen_through<T, E, A>(transport: T, server: &str)
where
    T: rmcp::transport::IntoTransport<rmcp::RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    use rmcp::model::{ServerNotification, SubscriptionFilter};
    let client = modern_rmcp(transport).await;
    let filter = SubscriptionFilter::builder()
        .tools_list_changed()
        .resource_subscription("example://greeting")
        // No server lists it: not granted.
        .resource_subscription("example://nowhere")
        .build();
    let mut subscription = client.listen(filter).await.expect("subscriptions/listen");
    let granted = subscription.acknowledged().clone();
    assert_eq!(granted.tools_list_changed, Some(true));
    assert_eq!(granted.prompts_list_changed, None);
    assert_eq!(
        granted.resource_subscriptions,
        Some(vec!["example://greeting".to_owned()])
    );
    // Not asked for: never on the stream. Asked for: on it.
    let touch = |uri: &str| json!({ "uri": uri });
    let tool = |name: &str| format!("{server}__{name}");
    call_tool(&client, &tool("touch"), touch("example://items/1")).await;
    call_tool(&client, &tool("touch"), touch("example://greeting")).await;
    let next = next_notification(&mut subscription).await;
    let ServerNotification::ResourceUpdatedNotification(updated) = next else {
        panic!("expected resources/updated, got {next:?}");
    };
    assert_eq!(updated.params.uri, "example://greeting");
    call_tool(&client, &tool("add_tool"), json!({ "name": "fresh" })).await;
    let next = next_notification(&mut subscription).await;
    assert!(
        matches!(next, ServerNotification::ToolListChangedNotification(_)),
        "{next:?}"
    );
    subscription.cancel().await.expect("end the stream");
    client.cancel().await.expect("close");
}
