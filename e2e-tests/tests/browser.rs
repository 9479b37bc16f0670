//! Browser tests: the WebAssembly client in headless Chromium against a two-node cluster.
//! Needs `web-client/dist` (built by `cargo xtask test`) and Chromium with chromedriver.

use e2e_tests::browser::{Browser, Driver};
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
