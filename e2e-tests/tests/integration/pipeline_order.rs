//! One order per room, across three nodes and many rooms, live and in the store alike.

use e2e_tests::checks::{assert_gapless, by_room, stored_messages, Observed};
use e2e_tests::TestEnv;

const ROOMS: usize = 6;
const PER_SENDER_PER_ROOM: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_receiver_sees_every_room_in_the_stored_order() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let nodes = [
        env.start_node("order-1").await?,
        env.start_node("order-2").await?,
        env.start_node("order-3").await?,
    ];
    let mut clients = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        clients.push(node.user(&format!("user{index}")).await?);
    }
    let mut rooms = Vec::new();
    for index in 0..ROOMS {
        let name = format!("room-{index}");
        let mut room = None;
        for client in &mut clients {
            room = Some(client.join(&name).await?.0);
        }
        rooms.extend(room);
    }

    // Every client sends into every room, interleaved, without waiting for answers.
    for round in 0..PER_SENDER_PER_ROOM {
        for (sender, client) in clients.iter_mut().enumerate() {
            for room in &rooms {
                client
                    .send_message(*room, &format!("u{sender}-r{room}-{round}"), "m")
                    .await?;
            }
        }
    }

    let total = clients.len() * ROOMS * PER_SENDER_PER_ROOM;
    let mut views = Vec::new();
    for client in &mut clients {
        let mut observed = Observed::default();
        client
            .observe_until(&mut observed, |o| o.messages.len() >= total)
            .await?;
        views.push(observed);
    }

    for room in &rooms {
        let stored = stored_messages(&env.db, *room).await?;
        assert_eq!(stored.len(), clients.len() * PER_SENDER_PER_ROOM);
        assert_gapless("store", &stored);
        for (index, view) in views.iter().enumerate() {
            let seen = by_room(view).remove(room).unwrap_or_default();
            assert_eq!(seen, stored, "client {index} saw room {room} differently");
        }
    }
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}
