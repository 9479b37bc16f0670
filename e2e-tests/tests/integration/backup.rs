//! `cargo xtask backup` and `cargo xtask restore` (the same code, `xtask/src/backup.rs`): a
//! database with messages in two rooms, backed up while its node runs, restored into a new
//! database; a node on the restore serves the history and goes on with each room's sequence.

#[path = "../../../xtask/src/backup.rs"]
mod xtask_backup;

use chat_protocol::api::MessagePage;
use chat_protocol::{RoomId, ServerFrame};
use e2e_tests::api::Api;
use e2e_tests::services::node_config;
use e2e_tests::{TestBus, TestDb, TestEnv, TestNode, WsClient};

async fn history(api: &Api, room: RoomId) -> anyhow::Result<Vec<(i64, String)>> {
    let reply = api.get(&format!("/api/rooms/{room}/messages")).await?;
    anyhow::ensure!(reply.status == 200, "{} {}", reply.status, reply.body);
    let page: MessagePage = reply.into()?;
    Ok(page
        .messages
        .into_iter()
        .map(|message| (message.seq.0, message.body))
        .collect())
}

/// Sends `bodies` to `room` and waits until each is stored; returns their sequence numbers.
async fn send_stored(
    client: &mut WsClient,
    room: RoomId,
    bodies: &[&str],
) -> anyhow::Result<Vec<i64>> {
    for body in bodies {
        client.send_message(room, body, body).await?;
    }
    let mut seqs = Vec::new();
    while seqs.len() < bodies.len() {
        let seq = client
            .recv_until(|frame| match frame {
                ServerFrame::Stored { seq, .. } => Some(seq.0),
                _ => None,
            })
            .await?;
        seqs.push(seq);
    }
    seqs.sort_unstable();
    Ok(seqs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_backup_serves_history_and_continues_each_rooms_sequence() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let node = env.start_node("backup-source").await?;
    let mut ada = node.user("ada").await?;
    let (lobby, _) = ada.join("lobby").await?;
    let (plans, _) = ada.join("plans").await?;
    assert_eq!(
        send_stored(&mut ada, lobby, &["l1", "l2", "l3"]).await?,
        [1, 2, 3]
    );
    assert_eq!(send_stored(&mut ada, plans, &["p1", "p2"]).await?, [1, 2]);

    // Backed up while the node runs.
    let dir = std::env::temp_dir().join(format!("chat-backup-{}", env.db.name));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("chat.dump");
    xtask_backup::backup(&env.db.url, &file)?;
    drop(ada);
    node.stop().await?;

    // Restored into a new, empty database, under a node of its own names.
    let restored = TestDb::create().await?;
    xtask_backup::restore(&restored.url, &file)?;
    let bus = TestBus::new();
    let node = TestNode::start(node_config(&restored.url, &bus.prefix, "backup-restored")).await?;
    let mut ada = node.user("ada").await?;
    let api = ada.api()?.clone();
    let body = |(seq, body): &(i64, String)| (*seq, body.clone());
    assert_eq!(
        history(&api, lobby)
            .await?
            .iter()
            .map(body)
            .collect::<Vec<_>>(),
        [
            (1, "l1".to_owned()),
            (2, "l2".to_owned()),
            (3, "l3".to_owned())
        ]
    );
    assert_eq!(
        history(&api, plans)
            .await?
            .iter()
            .map(body)
            .collect::<Vec<_>>(),
        [(1, "p1".to_owned()), (2, "p2".to_owned())]
    );
    ada.subscribe(lobby).await?;
    ada.subscribe(plans).await?;
    assert_eq!(send_stored(&mut ada, lobby, &["l4"]).await?, [4]);
    assert_eq!(send_stored(&mut ada, plans, &["p3"]).await?, [3]);

    // Restoring over a database that has data fails and changes nothing.
    let refused = xtask_backup::restore(&restored.url, &file);
    anyhow::ensure!(refused.is_err(), "a restore over data went through");
    assert_eq!(history(&api, lobby).await?.len(), 4);

    drop(ada);
    let _ = std::fs::remove_dir_all(&dir);
    node.stop().await
}
