//! The operator's view of a node: health, readiness, metrics and graceful shutdown.

use e2e_tests::checks::Observed;
use e2e_tests::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("ops").await?;
    let http = reqwest::Client::new();

    let health = http
        .get(format!("{}/healthz", node.http_url()))
        .send()
        .await?;
    assert_eq!(health.status(), 200);
    let ready = http
        .get(format!("{}/readyz", node.http_url()))
        .send()
        .await?;
    assert_eq!(ready.status(), 200);
    let report: serde_json::Value = ready.json().await?;
    assert_eq!(report["postgres"], "up");
    assert_eq!(report["rabbitmq"], "up");

    let mut client = node.user("ops").await?;
    let (room, _) = client.join("ops").await?;
    client.send_message(room, "m", "count me").await?;
    // The delivery can overtake RabbitMQ's confirm: wait for both, in either order.
    let mut observed = Observed::default();
    client
        .observe_until(&mut observed, |seen| {
            seen.accepted.contains("m") && seen.room_ids(room).len() == 1
        })
        .await?;
    let metrics = http
        .get(format!("{}/metrics", node.http_url()))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("chat_messages_accepted_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chat_messages_persisted_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("chat_connections 1"), "{metrics}");
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_postgres_is_unreachable() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // A port nothing listens on: the node starts, answers /healthz, but is not ready.
    let mut config = env.config("no-db");
    config.database_url =
        chat_backend::config::Secret("postgres://postgres@127.0.0.1:1/none".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(chat_backend::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let health = e2e_tests::eventually("healthz", || {
        let http = http.clone();
        async move { http.get(format!("http://{addr}/healthz")).send().await.ok() }
    })
    .await?;
    assert_eq!(health.status(), 200);
    let ready = http.get(format!("http://{addr}/readyz")).send().await?;
    assert_eq!(ready.status(), 503);
    let report: serde_json::Value = ready.json().await?;
    assert_eq!(report["postgres"], "down");
    let _ = stop.send(());
    node.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_websockets_with_going_away() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("stopping").await?;
    let mut client = node.user("leaver").await?;
    let stopping = tokio::spawn(node.stop());
    assert_eq!(client.recv_close().await?, Some(1001));
    stopping.await??;
    Ok(())
}
