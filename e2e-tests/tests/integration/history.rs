//! History pages backwards and forwards, and the newest messages served from Memcached without
//! ever showing a page older than an edit, a delete or a stored message.

use chat_protocol::api::MessagePage;
use chat_protocol::{ClientFrame, RoomId, Seq, ServerFrame};
use e2e_tests::api::Api;
use e2e_tests::{TestEnv, WsClient};

/// Sends `count` messages and waits until each is stored.
pub async fn send_stored(
    client: &mut WsClient,
    room: RoomId,
    prefix: &str,
    count: usize,
) -> anyhow::Result<()> {
    for n in 1..=count {
        client
            .send_message(room, &format!("{prefix}{n}"), &format!("message {n}"))
            .await?;
    }
    let mut stored = 0;
    client
        .recv_until(|frame| match frame {
            ServerFrame::Stored { .. } => {
                stored += 1;
                (stored == count).then_some(())
            }
            _ => None,
        })
        .await
}

async fn page(api: &Api, room: RoomId, query: &str) -> anyhow::Result<Vec<i64>> {
    let reply = api
        .get(&format!("/api/rooms/{room}/messages{query}"))
        .await?;
    anyhow::ensure!(reply.status == 200, "{} {}", reply.status, reply.body);
    let page: MessagePage = reply.into()?;
    Ok(page.messages.iter().map(|m| m.seq.0).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_pages_backwards_from_the_newest_and_forwards() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("history").await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("paging").await?;
    send_stored(&mut ada, room, "m", 30).await?;
    let api = ada.api()?.clone();

    assert_eq!(
        page(&api, room, "?limit=10").await?,
        (21..=30).collect::<Vec<_>>()
    );
    assert_eq!(
        page(&api, room, "?before=21&limit=10").await?,
        (11..=20).collect::<Vec<_>>()
    );
    assert_eq!(page(&api, room, "?before=4&limit=10").await?, vec![1, 2, 3]);
    assert!(page(&api, room, "?before=1").await?.is_empty());
    assert_eq!(
        page(&api, room, "?after=25&limit=10").await?,
        vec![26, 27, 28, 29, 30]
    );
    // Past the cached window: read from PostgreSQL, same answer shape.
    assert_eq!(page(&api, room, "?limit=200").await?.len(), 30);
    assert_eq!(page(&api, room, "").await?.len(), 30);

    api.get(&format!("/api/rooms/{room}/messages?before=5&after=1"))
        .await?
        .expect_error(400, "bad_request")?;
    api.get(&format!("/api/rooms/{room}/messages?before=soon"))
        .await?
        .expect_error(400, "bad_request")?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cached_newest_page_is_never_stale() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("recent-a").await?;
    let node_b = env.start_node("recent-b").await?;
    let mut ada = node_a.user("ada").await?;
    let (room, _) = ada.join("recent").await?;
    send_stored(&mut ada, room, "m", 8).await?;
    // Bob reads through node B, so writes on A must reach B's readers through the cache.
    let bob = node_b.sign_in("bob").await?;
    bob.post_empty(&format!("/api/rooms/{room}/join")).await?;
    let hits = "chat_history_cache_total{result=\"hit\"}";

    assert_eq!(page(&bob, room, "?limit=5").await?, vec![4, 5, 6, 7, 8]);
    let before = bob.metric(hits).await?;
    assert_eq!(page(&bob, room, "?limit=5").await?, vec![4, 5, 6, 7, 8]);
    assert_eq!(page(&bob, room, "?before=6&limit=3").await?, vec![3, 4, 5]);
    assert_eq!(
        bob.metric(hits).await?,
        before + 2.0,
        "the second read and the page inside the window came from the cache"
    );

    // An edit and a delete on node A: node B's next read shows both.
    ada.send(&ClientFrame::Edit {
        room_id: room,
        seq: Seq(7),
        body: "seven, edited".into(),
    })
    .await?;
    ada.recv_until(|frame| matches!(frame, ServerFrame::MessageEdited { .. }).then_some(()))
        .await?;
    ada.send(&ClientFrame::Delete {
        room_id: room,
        seq: Seq(8),
    })
    .await?;
    ada.recv_until(|frame| matches!(frame, ServerFrame::MessageDeleted { .. }).then_some(()))
        .await?;
    let latest: MessagePage = bob
        .get(&format!("/api/rooms/{room}/messages?limit=3"))
        .await?
        .into()?;
    let shown: Vec<_> = latest
        .messages
        .iter()
        .map(|m| {
            (
                m.seq.0,
                m.body.as_str(),
                m.edited_at_ms.is_some(),
                m.deleted,
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (6, "message 6", false, false),
            (7, "seven, edited", true, false),
            (8, "", false, true),
        ]
    );

    // A new message is in the next page as soon as its sender hears it is stored.
    send_stored(&mut ada, room, "later", 1).await?;
    let newest = page(&bob, room, "?limit=2").await?;
    assert_eq!(newest, vec![8, 9]);
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}
