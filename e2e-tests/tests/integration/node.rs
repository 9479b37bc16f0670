//! The operator's view of a node: health, readiness, metrics and graceful shutdown.

use chat_protocol::{ClientFrame, ClientMsgId, ServerFrame};
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
    // Every stage of the message's trip is counted once; the last stage's count can land just
    // after the delivery, so the metrics are read until they show it all.
    let mut expected = vec![
        "chat_messages_accepted_total 1".to_owned(),
        "chat_messages_persisted_total 1".to_owned(),
        "chat_connections 1".to_owned(),
        "chat_ingest_publish_sends_count 1".to_owned(),
        "chat_ingest_publish_sends_sum 1".to_owned(),
    ];
    for stage in ["ingest", "store", "queue", "invalidate", "publish"] {
        expected.push(format!(
            "chat_pipeline_seconds_count{{stage=\"{stage}\"}} 1"
        ));
    }
    let deadline = tokio::time::Instant::now() + e2e_tests::DEADLINE;
    loop {
        let metrics = http.get(node.metrics_url()).send().await?.text().await?;
        let missing: Vec<&String> = expected
            .iter()
            .filter(|line| !metrics.contains(line.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing {missing:?} in {metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_though_it_reads_nothing() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let node = env.start_node("sloth").await?;
    let mut sloth = node.user("sloth").await?;
    let (room, _) = sloth.join("flood").await?;
    let mut busy = node.user("busy").await?;
    busy.join("flood").await?;
    let api = busy.api()?.clone();

    // The sloth reads nothing from here on. Its socket's buffers fill, then its outbox; the
    // node then disconnects it. Sends go in rounds, each waited for, until that happens.
    let body = "z".repeat(3_000);
    let mut sent = 0;
    while api.metric("chat_slow_client_disconnects_total").await? < 1.0 {
        anyhow::ensure!(
            sent < 20_000,
            "{sent} messages sent and the sloth is still connected"
        );
        // Rounds small enough that the busy sender's own copies, which it reads only once the
        // round is sent, fit its outbox.
        for _ in 0..20 {
            sent += 1;
            busy.send(&ClientFrame::Send {
                room_id: room,
                client_msg_id: ClientMsgId(format!("m{sent}")),
                body: body.clone(),
            })
            .await?;
        }
        let mut stored = 0;
        while stored < 20 {
            busy.recv_until(|frame| matches!(frame, ServerFrame::Stored { .. }).then_some(()))
                .await?;
            stored += 1;
        }
    }

    // The node let go of the connection when it counted the disconnect, though the sloth never
    // read the close: stopping the node now finds it gone. Reading at last, the sloth gets what
    // was buffered, then 1008 (if it fitted) or the end of the connection; a connection still
    // held would be closed by the stop, with 1001.
    node.stop().await?;
    let close = sloth.recv_close().await?;
    assert!(matches!(close, None | Some(1008)), "closed with {close:?}");
    Ok(())
}
