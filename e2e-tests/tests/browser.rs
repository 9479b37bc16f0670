//! Browser tests: the WebAssembly app in headless Chromium against a cluster of two nodes, at
//! desktop width (1280×800) and phone width (390×844). Needs a built client (`CHAT_WEB_DIR`,
//! built by `cargo xtask web`) and Chromium with chromedriver. Screenshots of every main screen
//! go to `target/screenshots/` on every run.

// A node's future, spawned here, is deep enough that proving it `Send` needs more than the
// default 128 steps.
#![recursion_limit = "256"]

use anyhow::Context;
use e2e_tests::browser::{expect_accessible, layout_check, Browser, Driver, Viewport};
use e2e_tests::TestEnv;
use fantoccini::Locator;

/// WebDriver's Enter, Shift, Escape and arrow-down keys.
const ENTER: &str = "\u{E007}";
const SHIFT: &str = "\u{E008}";
const ESCAPE: &str = "\u{E00C}";
const ARROW_DOWN: &str = "\u{E015}";

fn ensure_web_client() -> anyhow::Result<()> {
    let web_dir = e2e_tests::services::web_dir()?;
    anyhow::ensure!(
        web_dir.join("index.html").exists(),
        "{} has no built web client; run `cargo xtask web`",
        web_dir.display()
    );
    Ok(())
}

/// Signs up `name` on the page at `base_url`.
async fn register(browser: &Browser, base_url: &str, name: &str) -> anyhow::Result<()> {
    browser.goto(base_url).await?;
    browser.register(name).await
}

/// Opens the sidebar drawer at phone width; nothing to do on a desktop.
async fn show_sidebar(browser: &Browser) -> anyhow::Result<()> {
    let closed = browser
        .attributes("#open-sidebar", "aria-expanded")
        .await?
        .iter()
        .all(|expanded| expanded != "true");
    if closed && browser.is_displayed("#open-sidebar").await? {
        browser.wait_for("#open-sidebar").await?.click().await?;
        wait_displayed(browser, "#create-room").await?;
        settled(browser, "#sidebar").await?;
    }
    Ok(())
}

async fn wait_displayed(browser: &Browser, selector: &str) -> anyhow::Result<()> {
    e2e_tests::eventually(&format!("{selector} shown"), || async {
        browser.is_displayed(selector).await.ok().filter(|s| *s)
    })
    .await
    .map(|_| ())
}

/// Waits for the transitions of `selector` (a drawer sliding in) to end, so that a screenshot
/// shows where it stops.
async fn settled(browser: &Browser, selector: &str) -> anyhow::Result<()> {
    let script = "const el = document.querySelector(arguments[0]);
                  return !!el && el.getAnimations().every(a => a.playState !== 'running');";
    e2e_tests::eventually(&format!("{selector} to stop moving"), || async {
        let done = browser
            .client()
            .ok()?
            .execute(script, vec![serde_json::json!(selector)])
            .await
            .ok()?;
        done.as_bool().filter(|d| *d)
    })
    .await
    .map(|_| ())
}

async fn click(browser: &Browser, selector: &str) -> anyhow::Result<()> {
    wait_displayed(browser, selector).await?;
    browser.wait_for(selector).await?.click().await?;
    Ok(())
}

async fn create_room(browser: &Browser, name: &str, private: bool) -> anyhow::Result<()> {
    show_sidebar(browser).await?;
    click(browser, "#create-room").await?;
    browser.fill("#create-dialog #dialog-first", name).await?;
    if private {
        click(browser, "#create-private").await?;
    }
    click(browser, "#create-submit").await?;
    browser.wait_for_text("#room-title", name).await
}

async fn open_room(browser: &Browser, name: &str) -> anyhow::Result<()> {
    show_sidebar(browser).await?;
    click(
        browser,
        &format!("#sidebar li.room[data-name='{name}'] button"),
    )
    .await?;
    browser.wait_for_text("#room-title", name).await
}

/// Types a message and presses Enter, once the composer is live.
async fn say(browser: &Browser, text: &str) -> anyhow::Result<()> {
    e2e_tests::eventually("the composer is enabled", || async {
        let composer = browser
            .client()
            .ok()?
            .find(Locator::Css("#composer"))
            .await
            .ok()?;
        composer.is_enabled().await.ok().filter(|e| *e)
    })
    .await?;
    let composer = browser.wait_for("#composer").await?;
    composer.send_keys(text).await?;
    composer.send_keys(ENTER).await?;
    Ok(())
}

/// Waits until the input's value is `expected`.
async fn wait_value(browser: &Browser, selector: &str, expected: &str) -> anyhow::Result<()> {
    e2e_tests::eventually(&format!("{selector} to say {expected:?}"), || async {
        let input = browser
            .client()
            .ok()?
            .find(Locator::Css(selector))
            .await
            .ok()?;
        let value = input.prop("value").await.ok()??;
        (value == expected).then_some(())
    })
    .await
    .map(|_| ())
}

/// The user picker `name` is an open combobox whose listbox has options; with `pointed`, the
/// first option is the one the arrow keys point at, as the box says to assistive technology.
async fn expect_combobox(browser: &Browser, name: &str, pointed: bool) -> anyhow::Result<()> {
    let field = format!("#{name}-dialog #dialog-first");
    assert_eq!(browser.attributes(&field, "role").await?, ["combobox"]);
    assert_eq!(
        browser.attributes(&field, "aria-controls").await?,
        [format!("{name}-suggestions")]
    );
    assert_eq!(browser.attributes(&field, "aria-expanded").await?, ["true"]);
    let options = format!("#{name}-suggestions[role='listbox'] li[role='option']");
    let selected = browser.attributes(&options, "aria-selected").await?;
    assert!(!selected.is_empty(), "no options in #{name}-suggestions");
    let active = browser.attributes(&field, "aria-activedescendant").await?;
    if pointed {
        assert_eq!(active, [format!("{name}-option-0")]);
        assert_eq!(selected.first().map(String::as_str), Some("true"));
    } else {
        assert_eq!(active, [""]);
        assert!(selected.iter().all(|s| s == "false"), "{selected:?}");
    }
    Ok(())
}

/// Makes the page believe its tab is hidden, and records the notifications it shows (their
/// titles, in `window.shownNotifications`) instead of showing them: headless Chromium has
/// neither a hidden tab nor a notification centre, the app's own logic runs as it would.
async fn hide_tab_and_record_notifications(browser: &Browser) -> anyhow::Result<()> {
    browser
        .client()?
        .execute(
            "window.shownNotifications = [];
             window.Notification = class {
               constructor(title) { window.shownNotifications.push(title); }
               static get permission() { return 'granted'; }
               static requestPermission() { return Promise.resolve('granted'); }
             };
             Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
             Object.defineProperty(document, 'visibilityState',
                                   { configurable: true, get: () => 'hidden' });
             document.dispatchEvent(new Event('visibilitychange'));",
            vec![],
        )
        .await?;
    Ok(())
}

/// Undoes [`hide_tab_and_record_notifications`]'s hidden tab.
async fn show_tab(browser: &Browser) -> anyhow::Result<()> {
    browser
        .client()?
        .execute(
            "delete document.hidden; delete document.visibilityState;
             document.dispatchEvent(new Event('visibilitychange'));",
            vec![],
        )
        .await?;
    Ok(())
}

async fn title(browser: &Browser) -> anyhow::Result<String> {
    Ok(browser.client()?.title().await?)
}

async fn wait_title(browser: &Browser, needle: &str) -> anyhow::Result<()> {
    e2e_tests::eventually(&format!("the title to contain {needle:?}"), || async {
        title(browser).await.ok().filter(|t| t.contains(needle))
    })
    .await
    .map(|_| ())
}

/// The registration form says what is wrong, next to the field, in plain words.
async fn registration_errors_at(viewport: Viewport) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("web-auth").await?;
    node.sign_in("taken").await?;
    let driver = Driver::start().await?;
    let browser = driver.session_at(viewport).await?;
    browser.goto(&node.http_url()).await?;
    browser.wait_for("#auth-form").await?;
    browser.screenshot("sign-in").await?;
    expect_accessible(&browser, "sign-in").await?;

    click(&browser, "#auth-switch").await?;
    // The rules are there before anything is submitted.
    browser.wait_for_text("#password-rule", "8 to 128").await?;
    browser.fill("#auth-username", "newcomer").await?;
    browser.fill("#auth-password", "short").await?;
    click(&browser, "#auth-submit").await?;
    browser
        .wait_for_text("#password-error", "A password has 8 to 128 characters")
        .await?;
    browser.fill("#auth-username", "taken").await?;
    browser
        .fill("#auth-password", "long enough password")
        .await?;
    click(&browser, "#auth-submit").await?;
    browser
        .wait_for_text("#username-error", "That user name is taken")
        .await?;
    assert!(browser.texts("#password-error").await?.concat().is_empty());
    browser.screenshot("register-errors").await?;
    expect_accessible(&browser, "register-errors").await?;

    browser.close().await?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registration_explains_a_bad_password_and_a_taken_name() -> anyhow::Result<()> {
    ensure_web_client()?;
    registration_errors_at(Viewport::DESKTOP).await?;
    registration_errors_at(Viewport::PHONE).await
}

/// Ada at desktop width on one node, bob at phone width on the other: rooms, invites, direct
/// messages, live unread counts, edits, deletes, Markdown and hostile text, leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_people_on_two_nodes_at_desktop_and_phone_width() -> anyhow::Result<()> {
    ensure_web_client()?;
    let env = TestEnv::new().await?;
    let node_a = env.start_node("web-a").await?;
    let node_b = env.start_node("web-b").await?;
    let driver = Driver::start().await?;
    let ada = driver.session_at(Viewport::DESKTOP).await?;
    let bob = driver.session_at(Viewport::PHONE).await?;

    register(&ada, &node_a.http_url(), "ada").await?;
    register(&bob, &node_b.http_url(), "bob").await?;
    ada.screenshot("empty").await?;
    bob.screenshot("empty").await?;
    expect_accessible(&ada, "empty").await?;
    expect_accessible(&bob, "empty").await?;

    // Ada creates a public room; bob finds it in the room browser and joins.
    create_room(&ada, "lobby", false).await?;
    show_sidebar(&bob).await?;
    click(&bob, "#browse-rooms").await?;
    bob.fill("#browse-dialog #dialog-first", "lob").await?;
    bob.wait_for("#browse-dialog li.browse-room[data-name='lobby']")
        .await?;
    bob.screenshot("browse").await?;
    expect_accessible(&bob, "browse").await?;
    click(
        &bob,
        "#browse-dialog li.browse-room[data-name='lobby'] button.join-room",
    )
    .await?;
    bob.wait_for_text("#room-title", "lobby").await?;

    // Both ways across nodes.
    say(&ada, "hi bob, from node a").await?;
    bob.wait_for_text("#messages", "hi bob, from node a")
        .await?;
    say(&bob, "hi ada, from node b").await?;
    ada.wait_for_text("#messages", "hi ada, from node b")
        .await?;
    // Bob came in while ada had the room open: her members panel learns of him.
    ada.wait_for("#members li.member[data-username='bob']")
        .await?;
    for browser in [&ada, &bob] {
        browser
            .wait_for("#messages li.message[data-seq='2']")
            .await?;
        let bodies = browser
            .texts("#messages li.message[data-seq] .body")
            .await?;
        assert_eq!(bodies, vec!["hi bob, from node a", "hi ada, from node b"]);
        // A day separator and times on every message group.
        browser
            .wait_for_text("#messages .day-separator", "Today")
            .await?;
        assert_eq!(browser.texts("#messages li.message .time").await?.len(), 2);
    }

    // Hostile text is shown as text; Markdown is rendered; javascript: links are not links.
    say(&ada, "<script>window.hacked=1</script><b>bold?</b>").await?;
    say(
        &ada,
        "*soft* **loud** `code` [site](https://example.com) [bad](javascript:alert(1))",
    )
    .await?;
    bob.wait_for("#messages li.message[data-seq='4'] .body em")
        .await?;
    bob.wait_for_text(
        "#messages li.message[data-seq='3'] .body",
        "<script>window.hacked=1</script><b>bold?</b>",
    )
    .await?;
    assert!(bob
        .client()?
        .find_all(Locator::Css(
            "#messages li.message[data-seq='3'] .body b, #messages script"
        ))
        .await?
        .is_empty());
    let hacked = bob
        .client()?
        .execute("return window.hacked === undefined;", vec![])
        .await?;
    assert_eq!(hacked, serde_json::json!(true));
    assert_eq!(
        bob.texts("#messages li.message[data-seq='4'] .body strong")
            .await?,
        vec!["loud"]
    );
    assert_eq!(
        bob.texts("#messages li.message[data-seq='4'] .body code")
            .await?,
        vec!["code"]
    );
    let hrefs = bob
        .attributes("#messages li.message[data-seq='4'] .body a", "href")
        .await?;
    assert_eq!(hrefs, vec!["https://example.com"]);
    assert_eq!(
        bob.attributes("#messages li.message[data-seq='4'] .body a", "rel")
            .await?,
        vec!["noopener noreferrer"]
    );
    bob.wait_for_text(
        "#messages li.message[data-seq='4'] .body",
        "[bad](javascript:alert(1))",
    )
    .await?;

    // A multi-line message keeps its lines.
    let composer = ada.wait_for("#composer").await?;
    composer.send_keys("line one").await?;
    composer
        .send_keys(&format!("{SHIFT}{ENTER}{SHIFT}"))
        .await?;
    composer.send_keys("line two").await?;
    composer.send_keys(ENTER).await?;
    bob.wait_for("#messages li.message[data-seq='5'] .body br")
        .await?;

    // Up edits the last message; the other side sees the new text, marked edited.
    let composer = ada.wait_for("#composer").await?;
    composer.send_keys("\u{E013}").await?; // ArrowUp
    ada.fill(
        "#messages li.message[data-seq='5'] textarea.edit-input",
        "line one, fixed",
    )
    .await?;
    ada.wait_for("#messages li.message[data-seq='5'] textarea.edit-input")
        .await?
        .send_keys(ENTER)
        .await?;
    bob.wait_for_text(
        "#messages li.message[data-seq='5'] .body",
        "line one, fixed",
    )
    .await?;
    bob.wait_for("#messages li.message.edited[data-seq='5'] .edited-mark")
        .await?;
    // Focus went back to the composer.
    let focused = ada
        .client()?
        .execute(
            "return document.activeElement && document.activeElement.id;",
            vec![],
        )
        .await?;
    assert_eq!(focused, serde_json::json!("composer"));

    // A long unbroken line wraps inside the column.
    say(&bob, &format!("a long line: {}", "abcdefghij".repeat(20))).await?;
    ada.wait_for("#messages li.message[data-seq='6']").await?;
    ada.screenshot("conversation").await?;
    bob.screenshot("conversation").await?;
    expect_accessible(&ada, "conversation").await?;
    expect_accessible(&bob, "conversation").await?;
    layout_check(&bob, "#messages").await?;

    // Delete asks first.
    ada.client()?
        .execute(
            "document.querySelector(\"#messages li.message[data-seq='3'] button.delete\").click();",
            vec![],
        )
        .await?;
    ada.wait_for("#confirm-delete").await?;
    ada.screenshot("confirm-delete").await?;
    click(&ada, "#confirm-delete button.confirm").await?;
    for browser in [&ada, &bob] {
        browser
            .wait_for_text(
                "#messages li.message.deleted[data-seq='3'] .body",
                "message deleted",
            )
            .await?;
    }

    // A private room, and an invite: bob's list gains it live.
    create_room(&ada, "secret plans", true).await?;
    click(&ada, "#invite-button").await?;
    ada.fill("#invite-dialog #dialog-first", "nobody-here")
        .await?;
    click(&ada, "#invite-submit").await?;
    ada.wait_for_text("#invite-error", "no user with that name")
        .await?;
    // The name from a suggestion: typed in part, chosen with the arrow keys and Enter. The
    // error about the name before goes as soon as the name changes.
    ada.fill("#invite-dialog #dialog-first", "bo").await?;
    ada.wait_without_text("#invite-error", "no user with that name")
        .await?;
    ada.wait_for("#invite-suggestions li[data-username='bob']")
        .await?;
    expect_combobox(&ada, "invite", false).await?;
    // Escape closes the list, not the dialog; the arrow opens it again on the first option.
    ada.wait_for("#invite-dialog #dialog-first")
        .await?
        .send_keys(ESCAPE)
        .await?;
    e2e_tests::eventually("the suggestions to close", || async {
        let expanded = ada
            .attributes("#invite-dialog #dialog-first", "aria-expanded")
            .await
            .ok()?;
        (expanded == ["false"]).then_some(())
    })
    .await?;
    assert!(!ada.is_displayed("#invite-suggestions").await?);
    assert!(ada.is_displayed("#invite-dialog").await?);
    ada.wait_for("#invite-dialog #dialog-first")
        .await?
        .send_keys(ARROW_DOWN)
        .await?;
    expect_combobox(&ada, "invite", true).await?;
    ada.screenshot("invite-suggestions").await?;
    expect_accessible(&ada, "invite-suggestions").await?;
    ada.wait_for("#invite-dialog #dialog-first")
        .await?
        .send_keys(ENTER)
        .await?;
    wait_value(&ada, "#invite-dialog #dialog-first", "bob").await?;
    assert!(
        !ada.is_displayed("#invite-suggestions").await?,
        "the list closes once a name is chosen"
    );
    click(&ada, "#invite-submit").await?;
    ada.wait_for_text("#invite-done", "bob is now a member")
        .await?;
    ada.client()?
        .execute(
            "document.querySelector('#invite-dialog .dialog-head button').click();",
            vec![],
        )
        .await?;
    bob.wait_for("#sidebar li.room[data-name='secret plans']")
        .await?;

    // Bob reads the lobby; news in the private room counts live, in the list and the title.
    say(&ada, "first secret").await?;
    say(&ada, "second secret").await?;
    bob.wait_for("#sidebar li.room[data-name='secret plans'][data-unread='2']")
        .await?;
    wait_title(&bob, "(2)").await?;
    // The room list as a drawer, with the count.
    show_sidebar(&bob).await?;
    bob.screenshot("unread").await?;
    expect_accessible(&bob, "unread").await?;
    open_room(&bob, "secret plans").await?;
    bob.wait_for_text("#messages", "second secret").await?;
    bob.wait_for("#new-messages-line").await?;
    bob.wait_for("#sidebar li.room[data-name='secret plans'][data-unread='0']")
        .await?;
    e2e_tests::eventually("the title to drop the count", || async {
        title(&bob).await.ok().filter(|t| !t.contains('('))
    })
    .await?;
    bob.screenshot("room").await?;
    ada.screenshot("room").await?;

    // A direct message, to someone chosen from the suggestions with a tap: ada gets it in her
    // list with a count, and a notification while her tab is hidden.
    show_sidebar(&bob).await?;
    click(&bob, "#new-direct").await?;
    bob.fill("#direct-dialog #dialog-first", "ad").await?;
    bob.wait_for("#direct-suggestions li[data-username='ada']")
        .await?;
    expect_combobox(&bob, "direct", false).await?;
    bob.screenshot("direct-suggestions").await?;
    expect_accessible(&bob, "direct-suggestions").await?;
    click(&bob, "#direct-suggestions li[data-username='ada']").await?;
    wait_value(&bob, "#direct-dialog #dialog-first", "ada").await?;
    click(&bob, "#direct-submit").await?;
    bob.wait_for_text("#room-title", "ada").await?;
    ada.wait_for("#direct-section li.room").await?;
    hide_tab_and_record_notifications(&ada).await?;
    say(&bob, "just between us").await?;
    ada.wait_for("#direct-section li.room[data-unread='1']")
        .await?;
    ada.wait_for_text("#direct-section", "bob").await?;
    let notified = e2e_tests::eventually("ada's notification", || async {
        let shown = ada
            .client()
            .ok()?
            .execute("return window.shownNotifications;", vec![])
            .await
            .ok()?;
        let shown: Vec<String> = serde_json::from_value(shown).ok()?;
        (!shown.is_empty()).then_some(shown)
    })
    .await?;
    assert_eq!(notified, vec!["New message from bob"]);
    show_tab(&ada).await?;
    click(&ada, "#direct-section li.room button").await?;
    ada.wait_for_text("#messages", "just between us").await?;

    // Members panel and settings, seen at both widths.
    click(&bob, "#toggle-members").await?;
    bob.wait_for("#members li.member[data-username='ada']")
        .await?;
    settled(&bob, "#members-panel").await?;
    bob.screenshot("members").await?;
    expect_accessible(&bob, "members").await?;
    // A tap outside the drawer closes it.
    bob.client()?
        .execute("document.querySelector('.scrim').click();", vec![])
        .await?;
    e2e_tests::eventually("the members drawer to close", || async {
        bob.is_displayed("#open-sidebar")
            .await
            .ok()
            .filter(|s| *s)?;
        bob.attributes("#toggle-members", "aria-expanded")
            .await
            .ok()
            .filter(|e| e.iter().all(|e| e != "true"))
    })
    .await?;
    ada.wait_for("#members li.member[data-username='bob']")
        .await?;
    show_sidebar(&bob).await?;
    click(&bob, "#open-settings").await?;
    bob.wait_for("#settings-dialog").await?;
    bob.screenshot("settings").await?;
    click(&ada, "#open-settings").await?;
    ada.screenshot("settings").await?;
    expect_accessible(&ada, "settings").await?;
    expect_accessible(&bob, "settings").await?;
    for browser in [&ada, &bob] {
        browser
            .client()?
            .execute(
                "document.querySelector('#settings-dialog .dialog-head button').click();",
                vec![],
            )
            .await?;
    }

    // Bob leaves the lobby: it goes from his list.
    open_room(&bob, "lobby").await?;
    click(&bob, "#leave-button").await?;
    click(&bob, "#confirm-leave button.confirm").await?;
    bob.wait_without_text("#room-section", "lobby").await?;

    // The phone layout: one column, nothing sideways.
    open_room(&bob, "secret plans").await?;
    layout_check(&bob, "#messages").await?;

    ada.close().await?;
    bob.close().await?;
    node_a.stop().await?;
    node_b.stop().await?;
    Ok(())
}

/// A send cut off by a lost connection fails, is retried once under the same id and is stored
/// once; the messages said while the browser was away arrive after it reconnects, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_send_is_retried_once_and_a_lost_connection_resumes() -> anyhow::Result<()> {
    ensure_web_client()?;
    let env = TestEnv::new().await?;
    let node = env.start_node("web-resume").await?;
    let proxy = e2e_tests::proxy::TcpProxy::start(&node.addr.to_string()).await?;
    let mut carol = node.user("carol").await?;
    let driver = Driver::start().await?;
    let dan = driver.session_at(Viewport::DESKTOP).await?;
    register(&dan, &format!("http://{}", proxy.addr), "dan").await?;
    create_room(&dan, "resume", false).await?;
    let (room_id, _) = carol.join("resume").await?;
    say(&dan, "before the cut").await?;
    dan.wait_for("#messages li.message[data-seq='1']").await?;

    // The connection goes while a send is under way.
    proxy.stall();
    say(&dan, "sent into the void").await?;
    dan.wait_for("#messages li.outgoing.pending").await?;
    proxy.cut();
    dan.wait_for_text("#connection-banner", "Reconnecting")
        .await?;
    dan.wait_for("#messages li.outgoing.failed button.retry")
        .await?;
    dan.screenshot("failed-send").await?;
    let composer = dan.wait_for("#composer").await?;
    assert!(!composer.is_enabled().await?);

    // Carol talks meanwhile.
    for n in 1..=3 {
        carol
            .send_message(
                room_id,
                &format!("away-{n}"),
                &format!("while you were away {n}"),
            )
            .await?;
    }
    proxy.restore();
    e2e_tests::eventually("the banner to go", || async {
        dan.is_displayed("#connection-banner")
            .await
            .ok()
            .filter(|shown| !*shown)
    })
    .await?;
    click(&dan, "#messages li.outgoing.failed button.retry").await?;
    dan.wait_for_text("#messages", "while you were away 3")
        .await?;
    e2e_tests::eventually("the retried message stored", || async {
        let bodies = dan
            .texts("#messages li.message[data-seq] .body")
            .await
            .ok()?;
        (bodies
            .iter()
            .filter(|b| b.as_str() == "sent into the void")
            .count()
            == 1
            && dan.texts("#messages li.outgoing").await.ok()?.is_empty())
        .then_some(())
    })
    .await?;
    let bodies = dan.texts("#messages li.message[data-seq] .body").await?;
    for expected in [
        "before the cut",
        "while you were away 1",
        "while you were away 2",
        "while you were away 3",
        "sent into the void",
    ] {
        assert_eq!(
            bodies.iter().filter(|b| b.as_str() == expected).count(),
            1,
            "{expected:?} in {bodies:?}"
        );
    }
    let seqs = dan
        .attributes("#messages li.message[data-seq]", "data-seq")
        .await?;
    let mut sorted = seqs.clone();
    sorted.sort_by_key(|s| s.parse::<i64>().unwrap_or(0));
    sorted.dedup();
    assert_eq!(seqs, sorted, "each seq once, in order");

    dan.close().await?;
    node.stop().await?;
    Ok(())
}

/// The node the browser is connected to is killed (SIGKILL, no drain): the banner says so, the
/// browser reconnects through the same address to the surviving node (a load balancer that
/// takes the dead node out), and the conversation goes on with nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_s_browser_reconnects_to_the_other_node_and_resumes() -> anyhow::Result<()> {
    ensure_web_client()?;
    let env = TestEnv::new().await?;
    let mut doomed = e2e_tests::process::ProcessNode::start(&env.config("web-doomed")).await?;
    let survivor = env.start_node("web-survivor").await?;
    let balancer = e2e_tests::proxy::TcpProxy::start_failover(&[
        &doomed.addr.to_string(),
        &survivor.addr.to_string(),
    ])
    .await?;
    let driver = Driver::start().await?;
    let erin = driver.session_at(Viewport::DESKTOP).await?;
    let failure = erin.screenshot_on_failure("node-killed")?;
    register(&erin, &format!("http://{}", balancer.addr), "erin").await?;
    create_room(&erin, "failover", false).await?;
    let mut fay = survivor.user("fay").await?;
    let (room_id, _) = fay.join("failover").await?;
    say(&erin, "before the kill").await?;
    erin.wait_for("#messages li.message[data-seq='1']").await?;
    fay.next_message(room_id).await?;

    // The banner may come and go between two looks: the page remembers whether it showed.
    erin.client()?
        .execute(
            "window.bannerShown = false;
             const seen = () => {
               const banner = document.querySelector('#connection-banner');
               if (banner && banner.offsetParent !== null
                   && banner.textContent.includes('Reconnecting')) {
                 window.bannerShown = true;
               }
             };
             new MutationObserver(seen).observe(document.body,
               { subtree: true, childList: true, characterData: true, attributes: true });",
            vec![],
        )
        .await?;
    doomed.kill()?;
    for n in 1..=3 {
        fay.send_message(
            room_id,
            &format!("meanwhile-{n}"),
            &format!("said while erin moved {n}"),
        )
        .await?;
    }
    erin.wait_for_text("#messages", "said while erin moved 3")
        .await?;
    let shown = erin
        .client()?
        .execute("return window.bannerShown;", vec![])
        .await?;
    assert_eq!(shown, serde_json::json!(true), "the banner never showed");
    e2e_tests::eventually("the banner to go", || async {
        erin.is_displayed("#connection-banner")
            .await
            .ok()
            .filter(|shown| !*shown)
    })
    .await?;
    say(&erin, "after the kill, from the other node").await?;
    // Fay's own three come first.
    while fay.next_message(room_id).await?.body != "after the kill, from the other node" {}
    erin.wait_for("#messages li.message[data-seq='5']").await?;
    e2e_tests::eventually("erin's send stored", || async {
        erin.texts("#messages li.outgoing")
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await?;
    let seen = erin.texts("#messages li.message[data-seq] .body").await?;
    assert_eq!(
        seen,
        [
            "before the kill",
            "said while erin moved 1",
            "said while erin moved 2",
            "said while erin moved 3",
            "after the kill, from the other node",
        ],
        "each message once, in order"
    );
    let seqs = erin
        .attributes("#messages li.message[data-seq]", "data-seq")
        .await?;
    assert_eq!(seqs, ["1", "2", "3", "4", "5"]);
    failure.passed();
    erin.close().await?;
    survivor.stop().await?;
    Ok(())
}

/// Scrolling up loads the page before, and the message the user was reading stays where it
/// was on the screen: not a pixel of jump, in any frame, while the older messages go in above.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn older_history_loads_above_without_moving_what_is_read() -> anyhow::Result<()> {
    ensure_web_client()?;
    let env = TestEnv::new().await?;
    let node = env.start_node("web-history").await?;
    let mut gus = node.user("gus").await?;
    let (room_id, _) = gus.join("history").await?;
    for n in 1..=130 {
        gus.send_message(room_id, &format!("h-{n}"), &format!("history line {n}"))
            .await?;
    }
    while gus.next_message(room_id).await?.seq.0 < 130 {}

    let driver = Driver::start().await?;
    let hal = driver.session_at(Viewport::DESKTOP).await?;
    let failure = hal.screenshot_on_failure("history")?;
    register(&hal, &node.http_url(), "hal").await?;
    click(&hal, "#browse-rooms").await?;
    hal.fill("#browse-dialog #dialog-first", "history").await?;
    click(
        &hal,
        "#browse-dialog li.browse-room[data-name='history'] button.join-room",
    )
    .await?;
    hal.wait_for("#messages li.message[data-seq='130']").await?;
    // The newest page only.
    hal.wait_for_count("#messages li.message[data-seq]", 50)
        .await?;

    // Scroll to the top; the first message wholly in view is the one being read. Each frame
    // from now on, the page notes how far its text moved.
    let anchor = hal
        .client()?
        .execute(
            "const box = document.querySelector('#messages');
             box.scrollTop = 0;
             const top = box.getBoundingClientRect().top;
             const rows = [...box.querySelectorAll('li.message[data-seq]')];
             const row = rows.find(r => r.querySelector('.body').getBoundingClientRect().top >= top);
             const seq = row.dataset.seq;
             const at = () => document.querySelector(`#messages li.message[data-seq='${seq}'] .body`)
                                 .getBoundingClientRect().top;
             const start = at();
             window.anchorShift = { seq, most: 0, frames: 0, moves: [] };
             let last = 0;
             const watch = () => {
               const shift = at() - start;
               window.anchorShift.most = Math.max(window.anchorShift.most, Math.abs(shift));
               window.anchorShift.frames += 1;
               if (shift !== last) {
                 const rows = box.querySelectorAll('li.message[data-seq]').length;
                 window.anchorShift.moves.push(
                   `frame ${window.anchorShift.frames}: ${shift} px, ${rows} messages, ` +
                   `scrollTop ${box.scrollTop} of ${box.scrollHeight}`);
                 last = shift;
               }
               requestAnimationFrame(watch);
             };
             requestAnimationFrame(watch);
             return seq;",
            vec![],
        )
        .await?;
    let anchor = anchor.as_str().unwrap_or_default().to_owned();
    assert_eq!(anchor, "81", "the oldest of the newest page is read first");
    hal.wait_for("#messages li.message[data-seq='31']").await?;
    hal.wait_for_count("#messages li.message[data-seq]", 100)
        .await?;
    // Some frames after the older page went in.
    let frames_then = frames(&hal).await?;
    e2e_tests::eventually("ten more frames", || async {
        let now = frames(&hal).await.ok()?;
        (now >= frames_then + 10).then_some(())
    })
    .await?;
    let shift = hal
        .client()?
        .execute("return window.anchorShift;", vec![])
        .await?;
    let most = shift["most"].as_f64().unwrap_or(f64::MAX);
    assert!(
        most <= 1.0,
        "message {anchor} moved {most} px while older messages loaded: {}",
        shift["moves"]
    );
    hal.screenshot("history-loaded").await?;
    failure.passed();
    hal.close().await?;
    node.stop().await?;
    Ok(())
}

async fn frames(browser: &Browser) -> anyhow::Result<u64> {
    let frames = browser
        .client()?
        .execute("return window.anchorShift.frames;", vec![])
        .await?;
    frames.as_u64().context("frames is not a number")
}
