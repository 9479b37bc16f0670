//! `GET /api/search`: messages found by their words, across nodes, only in the caller's rooms,
//! never deleted ones, newest first and paged, with the matched words marked.

use chat_protocol::search::SearchPage;
use chat_protocol::{ClientFrame, Seq, ServerFrame};
use e2e_tests::{Api, TestEnv};

async fn search(api: &Api, query: &str) -> anyhow::Result<SearchPage> {
    let answer = api.get(&format!("/api/search?{query}")).await?;
    assert_eq!(answer.status, 200, "{query}: {}", answer.body);
    answer.into()
}

fn bodies(page: &SearchPage) -> Vec<&str> {
    page.hits
        .iter()
        .map(|hit| hit.message.body.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_sent_on_one_node_is_found_on_the_other_only_by_members() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("search-a").await?;
    let node_b = env.start_node("search-b").await?;
    let mut ada = node_a.user("ada").await?;
    let ada_api = ada.api()?.clone();
    let (lobby, _) = ada.join("lobby").await?;
    let private = ada_api.private_room("plans").await?;
    ada.subscribe(private).await?;
    let sent = [
        (lobby, "l1", "Deploy on Friday? No deploys on Fridays."),
        (lobby, "l2", "lunch at noon"),
        (private, "p1", "the secret deploy plan"),
        (lobby, "l3", "to be deleted: deploy"),
        (lobby, "l4", "DEPLOY done, <b>really</b>"),
    ];
    for (room, id, body) in sent {
        ada.send_message(room, id, body).await?;
        ada.next_message(room).await?;
    }
    // Deleted messages are never found (the lobby's third).
    ada.send(&ClientFrame::Delete {
        room_id: lobby,
        seq: Seq(3),
    })
    .await?;
    ada.recv_until(|frame| matches!(frame, ServerFrame::MessageDeleted { .. }).then_some(()))
        .await?;

    // Bob, on the other node, is in the lobby only.
    let bob = node_b.sign_in("bob").await?;
    assert_eq!(
        bob.post_empty(&format!("/api/rooms/{}/join", lobby.0))
            .await?
            .status,
        200
    );
    let page = search(&bob, "q=deploy").await?;
    assert_eq!(
        bodies(&page),
        [
            "DEPLOY done, <b>really</b>",
            "Deploy on Friday? No deploys on Fridays."
        ]
    );
    assert_eq!(page.next, None);
    // The words are marked as byte ranges of the body: whole words, any case.
    let first = &page.hits[0];
    let marked: Vec<&str> = first
        .marks
        .iter()
        .map(|mark| &first.message.body[mark.start..mark.end])
        .collect();
    assert_eq!(marked, ["DEPLOY"]);

    // Ada, a member of both, finds the private one too, and can narrow to a room or sender.
    let ada_on_b = node_b.api().with_token(ada_api.token().unwrap_or_default());
    assert_eq!(search(&ada_on_b, "q=deploy").await?.hits.len(), 3);
    assert_eq!(
        bodies(&search(&ada_on_b, &format!("q=deploy&room_id={}", private.0)).await?),
        ["the secret deploy plan"]
    );
    let bob_id = bob.get("/api/me").await?.body["user_id"]
        .as_i64()
        .unwrap_or(-1);
    assert!(search(&ada_on_b, &format!("q=deploy&sender_id={bob_id}"))
        .await?
        .hits
        .is_empty());
    // Words must all be there; a phrase must be whole; `-word` excludes.
    assert_eq!(
        bodies(&search(&bob, "q=deploy%20friday").await?),
        ["Deploy on Friday? No deploys on Fridays."]
    );
    assert!(search(&bob, "q=%22friday%20deploy%22")
        .await?
        .hits
        .is_empty());
    assert_eq!(
        bodies(&search(&bob, "q=deploy%20-friday").await?),
        ["DEPLOY done, <b>really</b>"]
    );
    // Nothing to look for finds nothing.
    assert!(search(&bob, "q=").await?.hits.is_empty());
    assert!(search(&bob, "q=%3F%21").await?.hits.is_empty());

    // Once bob leaves, the lobby's messages are not his to find any more.
    assert_eq!(
        bob.post_empty(&format!("/api/rooms/{}/leave", lobby.0))
            .await?
            .status,
        204
    );
    assert!(search(&bob, "q=deploy").await?.hits.is_empty());

    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_pages_newest_first_and_refuses_bad_parameters() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("search-pages").await?;
    let mut ada = node.user("ada").await?;
    let api = ada.api()?.clone();
    let (room, _) = ada.join("pages").await?;
    for n in 1..=7 {
        ada.send_message(room, &format!("m{n}"), &format!("word number {n}"))
            .await?;
        ada.next_message(room).await?;
    }
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let query = match &before {
            Some(cursor) => format!("q=word&limit=3&before={cursor}"),
            None => "q=word&limit=3".to_owned(),
        };
        let page = search(&api, &query).await?;
        seen.extend(page.hits.iter().map(|hit| hit.message.seq.0));
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
        assert!(seen.len() <= 7, "pages repeat: {seen:?}");
    }
    assert_eq!(seen, [7, 6, 5, 4, 3, 2, 1]);

    for bad in [
        "q=a%00b",
        "q=word&limit=0",
        "q=word&limit=51",
        "q=word&limit=x",
        "q=word&room_id=-1",
        "q=word&sender_id=abc",
        "q=word&before=nonsense",
        "q=a%20b%20c%20d%20e%20f%20g%20h%20i",
    ] {
        let answer = api.get(&format!("/api/search?{bad}")).await?;
        answer.expect_error(400, "bad_request")?;
    }
    let long = "a".repeat(201);
    api.get(&format!("/api/search?q={long}"))
        .await?
        .expect_error(400, "bad_request")?;
    // Without a session: 401, as everywhere.
    node.api()
        .get("/api/search?q=word")
        .await?
        .expect_error(401, "unauthenticated")?;

    node.stop().await?;
    Ok(())
}
