//! Browser tests: the WebAssembly client in headless Chromium against a two-node cluster.
//! Needs `web-client/dist` (built by `cargo xtask test`) and Chromium with chromedriver.

use chat_protocol::Seq;
use e2e_tests::browser::{Browser, Driver};
use e2e_tests::proxy::TcpProxy;
use e2e_tests::TestEnv;

/// Registers `name` in the page, then joins the public room `room` (created if new).
async fn join(browser: &Browser, base_url: &str, name: &str, room: &str) -> anyhow::Result<()> {
    browser.goto(base_url).await?;
    browser.fill("#name", name).await?;
    browser
        .fill("#password", &format!("{name}-password"))
        .await?;
    browser.wait_for("#register-button").await?.click().await?;
    browser.wait_for_text("#status", "signed in as").await?;
    browser.fill("#room", room).await?;
    browser.wait_for("#join-button").await?.click().await?;
    browser.wait_for_text("#status", "joined").await?;
    browser.wait_for_text("#room-list", room).await
}

async fn say(browser: &Browser, text: &str) -> anyhow::Result<()> {
    let composer = browser.wait_for("#composer").await?;
    composer.send_keys(text).await?;
    composer.send_keys("\u{E007}").await?; // WebDriver's Enter key
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_browsers_on_two_nodes_talk_both_ways() -> anyhow::Result<()> {
    let web_dir = e2e_tests::services::web_dir()?;
    anyhow::ensure!(
        web_dir.join("index.html").exists(),
        "{} has no built web client; run `cargo xtask test` (or `cargo xtask web`)",
        web_dir.display()
    );
    let env = TestEnv::new().await?;
    let node_a = env.start_node("web-a").await?;
    let node_b = env.start_node("web-b").await?;
    let driver = Driver::start().await?;
    let ada = driver.session().await?;
    let bob = driver.session().await?;

    join(&ada, &node_a.http_url(), "ada", "lobby").await?;
    join(&bob, &node_b.http_url(), "bob", "lobby").await?;

    say(&ada, "hi bob, from node a").await?;
    bob.wait_for_text("#messages", "hi bob, from node a")
        .await?;
    say(&bob, "hi ada, from node b").await?;
    ada.wait_for_text("#messages", "hi ada, from node b")
        .await?;

    // Both pages show the same conversation, in the same order, with sequence numbers.
    for browser in [&ada, &bob] {
        browser
            .wait_for("#messages li.message[data-seq='2']")
            .await?;
        let bodies = browser
            .texts("#messages li.message[data-seq] .body")
            .await?;
        assert_eq!(bodies, vec!["hi bob, from node a", "hi ada, from node b"]);
        let senders = browser
            .texts("#messages li.message[data-seq] .sender")
            .await?;
        assert_eq!(senders, vec!["ada", "bob"]);
    }

    ada.close().await?;
    bob.close().await?;
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

/// Opens the page again (the session cookie signs it in) and opens `room` from the room list.
async fn reopen(browser: &Browser, base_url: &str, room: &str) -> anyhow::Result<()> {
    browser.goto(base_url).await?;
    browser.wait_for_text("#room-list", room).await?;
    browser
        .wait_for("#room-list li.room")
        .await?
        .click()
        .await?;
    browser.wait_for_text("#status", "joined").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edits_deletes_typing_presence_and_unread_cross_nodes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node_a = env.start_node("web-a").await?;
    let node_b = env.start_node("web-b").await?;
    let driver = Driver::start().await?;
    let ada = driver.session().await?;
    let bob = driver.session().await?;
    join(&ada, &node_a.http_url(), "ada", "team").await?;
    join(&bob, &node_b.http_url(), "bob", "team").await?;

    // Bob's member list shows ada, connected to the other node, online.
    bob.wait_for("#members li.member[data-username='ada'][data-presence='online']")
        .await?;

    // Typing shows on the other page, and goes when the message arrives.
    let composer = ada.wait_for("#composer").await?;
    composer.send_keys("frist post").await?;
    bob.wait_for_text("#typing", "ada is typing").await?;
    composer.send_keys("\u{E007}").await?;
    bob.wait_for_text("#messages li.message[data-seq='1'] .body", "frist post")
        .await?;
    bob.wait_without_text("#typing", "ada is typing").await?;

    // Ada fixes her message in place; bob sees the new text, marked edited.
    ada.wait_for("#messages li.message[data-seq='1'] button.edit")
        .await?
        .click()
        .await?;
    ada.fill(
        "#messages li.message[data-seq='1'] input.edit-input",
        "first post",
    )
    .await?;
    ada.wait_for("#messages li.message[data-seq='1'] input.edit-input")
        .await?
        .send_keys("\u{E007}")
        .await?;
    bob.wait_for_text("#messages li.message[data-seq='1'] .body", "first post")
        .await?;
    bob.wait_for_text(
        "#messages li.message[data-seq='1'] .edited-mark",
        "(edited)",
    )
    .await?;
    // Only the sender gets controls.
    bob.wait_for_count("#messages li.message[data-seq='1'] button", 0)
        .await?;

    // A deleted message leaves a placeholder in its place on both pages.
    say(&ada, "oops, wrong room").await?;
    bob.wait_for_text("#messages li.message[data-seq='2'] .body", "oops")
        .await?;
    ada.wait_for("#messages li.message[data-seq='2'] button.delete")
        .await?
        .click()
        .await?;
    for browser in [&ada, &bob] {
        browser
            .wait_for_text(
                "#messages li.message.deleted[data-seq='2'] .body",
                "message deleted",
            )
            .await?;
    }

    // While bob is away a message comes: his room list counts it, and reading clears it.
    bob.goto("about:blank").await?;
    say(&ada, "are you there?").await?;
    ada.wait_for("#messages li.message[data-seq='3']").await?;
    bob.goto(&node_b.http_url()).await?;
    bob.wait_for("#room-list li.room[data-unread='1']").await?;
    reopen(&bob, &node_b.http_url(), "team").await?;
    bob.wait_for("#room-list li.room[data-unread='0']").await?;
    // History shows the edit and the delete the same way the live frames did.
    bob.wait_for_text("#messages li.message[data-seq='3'] .body", "are you there?")
        .await?;
    let bodies = bob.texts("#messages li.message[data-seq] .body").await?;
    assert_eq!(
        bodies,
        vec!["first post", "message deleted", "are you there?"]
    );
    bob.wait_for_text("#messages li.message.edited[data-seq='1']", "(edited)")
        .await?;

    // Ada closes her browser: bob sees her go offline.
    bob.wait_for("#members li.member[data-username='ada'][data-presence='online']")
        .await?;
    ada.close().await?;
    bob.wait_for("#members li.member[data-username='ada'][data-presence='offline']")
        .await?;

    bob.close().await?;
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_pages_back_and_a_lost_connection_resumes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("web-history").await?;
    // The browser reaches the node through a proxy the test can cut, like a network failure.
    let proxy = TcpProxy::start(&node.addr.to_string()).await?;
    let mut carol = node.user("carol").await?;
    let (room_id, _) = carol.join("archive").await?;
    for n in 1..=60 {
        carol
            .send_message(room_id, &format!("seed-{n}"), &format!("message {n}"))
            .await?;
    }
    while carol.next_message(room_id).await?.seq < Seq(60) {}

    let driver = Driver::start().await?;
    let dan = driver.session().await?;
    join(&dan, &format!("http://{}", proxy.addr), "dan", "archive").await?;

    // The newest page, then the older one, in order, until the first message.
    dan.wait_for("#messages li.message[data-seq='60']").await?;
    dan.wait_for_count("#messages li.message[data-seq]", 50)
        .await?;
    dan.wait_for("#load-older").await?.click().await?;
    dan.wait_for("#messages li.message[data-seq='1']").await?;
    let seqs = dan
        .attributes("#messages li.message[data-seq]", "data-seq")
        .await?;
    let expected: Vec<String> = (1..=60).map(|n| n.to_string()).collect();
    assert_eq!(seqs, expected);
    assert!(!dan.is_displayed("#load-older").await?);

    // The connection drops; what is said meanwhile arrives after the reconnect, once each.
    proxy.cut();
    dan.wait_for_text("#status", "reconnecting").await?;
    for n in 61..=62 {
        carol
            .send_message(room_id, &format!("seed-{n}"), &format!("message {n}"))
            .await?;
    }
    while carol.next_message(room_id).await?.seq < Seq(62) {}
    proxy.restore();
    dan.wait_for("#messages li.message[data-seq='62']").await?;
    dan.wait_for_text("#status", "joined").await?;
    let seqs = dan
        .attributes("#messages li.message[data-seq]", "data-seq")
        .await?;
    let expected: Vec<String> = (1..=62).map(|n| n.to_string()).collect();
    assert_eq!(seqs, expected);

    dan.close().await?;
    node.stop().await?;
    Ok(())
}
