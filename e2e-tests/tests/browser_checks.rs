//! The browser checks themselves, on pages made to pass or fail them, and the built client as
//! a browser receives it: hashed assets, served to a real Chromium, interactive in time.
//! Needs Chromium with chromedriver, axe-core (`cargo xtask test` installs it) and
//! `web-client/dist`.

// A node's future, spawned here, is deep enough that proving it `Send` needs more than the
// default 128 steps.
#![recursion_limit = "256"]

use e2e_tests::browser::{
    axe_scan, expect_accessible, layout_check, screenshot_dir, time_to_interactive, Browser,
    Driver, Viewport,
};
use e2e_tests::TestEnv;
use std::path::PathBuf;

/// A page of our own, written to a temporary file, as a `file://` URL.
struct Fixture {
    path: PathBuf,
}

impl Fixture {
    fn new(body: &str) -> anyhow::Result<Fixture> {
        let path = std::env::temp_dir().join(format!("chat-fixture-{}.html", uuid::Uuid::new_v4()));
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>fixture</title></head><body><main>{body}</main></body></html>"
        );
        std::fs::write(&path, html)?;
        Ok(Fixture { path })
    }

    fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn open(browser: &Browser, body: &str) -> anyhow::Result<Fixture> {
    let fixture = Fixture::new(body)?;
    browser.goto(&fixture.url()).await?;
    Ok(fixture)
}

/// The width and height a PNG's header gives.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    let number = |at: usize| {
        png.get(at..at + 4)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u32::from_be_bytes)
    };
    Some((number(16)?, number(20)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_show_pages_at_desktop_and_phone_width() -> anyhow::Result<()> {
    let driver = Driver::start().await?;
    for viewport in Viewport::ALL {
        let browser = driver.session_at(viewport).await?;
        let _page = open(&browser, "<p>hello</p>").await?;
        // The page's viewport, not the window, has the size; screenshots show exactly it.
        assert_eq!(
            browser.inner_size().await?,
            (viewport.width, viewport.height)
        );
        let png = browser.client()?.screenshot().await?;
        assert_eq!(png_size(&png), Some((viewport.width, viewport.height)));
        let is_touch = browser
            .client()?
            .execute("return navigator.maxTouchPoints > 0;", Vec::new())
            .await?;
        assert_eq!(is_touch.as_bool(), Some(viewport.mobile), "{viewport:?}");
        browser.close().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn axe_reports_serious_violations_with_their_elements() -> anyhow::Result<()> {
    let driver = Driver::start().await?;
    let browser = driver.session().await?;

    let _broken = open(
        &browser,
        "<h1>Rooms</h1><img src=\"data:,\" id=\"avatar\"><button id=\"send\"></button>",
    )
    .await?;
    let violations = axe_scan(&browser).await?;
    let ids = violations.ids();
    assert!(ids.contains(&"image-alt"), "{violations}");
    assert!(ids.contains(&"button-name"), "{violations}");
    let message = violations.to_string();
    assert!(message.contains("#avatar"), "{message}");
    assert!(message.contains("#send"), "{message}");
    let failed = expect_accessible(&browser, "fixture-broken").await;
    assert!(failed.is_err());

    let _clean = open(
        &browser,
        "<h1>Rooms</h1><img src=\"data:,\" alt=\"Ada's avatar\"><button>Send</button>",
    )
    .await?;
    expect_accessible(&browser, "fixture-clean").await?;

    browser.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn layout_check_catches_sideways_scroll_and_a_narrow_column() -> anyhow::Result<()> {
    let driver = Driver::start().await?;
    let phone = driver.session_at(Viewport::PHONE).await?;

    let _cramped = open(
        &phone,
        "<div style=\"display:flex\"><nav style=\"flex:0 0 236px\">rooms</nav>\
         <section id=\"conversation\" style=\"flex:0 0 154px\">messages</section>\
         <aside style=\"flex:0 0 200px\">members</aside></div>",
    )
    .await?;
    let problem = match layout_check(&phone, "#conversation").await {
        Ok(()) => anyhow::bail!("a 154 px column beside others passed the layout check"),
        Err(error) => error.to_string(),
    };
    assert!(problem.contains("scrolls sideways"), "{problem}");
    assert!(
        problem.contains("#conversation is 154 px wide"),
        "{problem}"
    );

    let _one_column = open(
        &phone,
        "<section id=\"conversation\" style=\"width:100%\">messages</section>",
    )
    .await?;
    layout_check(&phone, "#conversation").await?;

    phone.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn screenshots_go_under_the_width_and_one_is_kept_from_a_failure() -> anyhow::Result<()> {
    let driver = Driver::start().await?;
    let phone = driver.session_at(Viewport::PHONE).await?;
    let _page = open(&phone, "<p>hello</p>").await?;
    let name = format!("fixture-{}", uuid::Uuid::new_v4().simple());

    let path = phone.screenshot(&name).await?;
    assert_eq!(
        path,
        screenshot_dir()?.join("390").join(format!("{name}.png"))
    );
    let png = std::fs::read(&path)?;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // A guard dropped without `passed` stands for a test that failed on its way.
    let failed = screenshot_dir()?
        .join("390")
        .join(format!("{name}-failed.png"));
    phone.screenshot_on_failure(&name)?.passed();
    assert!(!failed.exists());
    drop(phone.screenshot_on_failure(&name)?);
    assert!(failed.exists());

    for file in [path, failed] {
        std::fs::remove_file(file)?;
    }
    phone.close().await?;
    Ok(())
}

/// The built client as served: `index.html` names only content-hashed assets, which load,
/// and the sign-in screen answers within the test deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_built_client_loads_from_hashed_assets() -> anyhow::Result<()> {
    let web_dir = e2e_tests::services::web_dir()?;
    let index = std::fs::read_to_string(web_dir.join("index.html")).map_err(|error| {
        anyhow::anyhow!(
            "{} has no built web client ({error}); run `cargo xtask web`",
            web_dir.display()
        )
    })?;
    assert!(
        index.contains("assets/"),
        "index.html names no asset:\n{index}"
    );
    let env = TestEnv::new().await?;
    let node = env.start_node("web-assets").await?;
    let driver = Driver::start().await?;

    for viewport in Viewport::ALL {
        let browser = driver.session_at(viewport).await?;
        let failure = browser.screenshot_on_failure("sign-in-load")?;
        let elapsed = time_to_interactive(
            &browser,
            &node.http_url(),
            e2e_tests::browser::timing::SIGN_IN_READY,
        )
        .await?;
        println!("{} px: interactive after {elapsed:?}", viewport.width);
        // Every script, stylesheet and the wasm came from /assets/ under a hashed name.
        let loaded = browser
            .client()?
            .execute(
                "return performance.getEntriesByType('resource').map((r) => r.name);",
                Vec::new(),
            )
            .await?;
        let loaded: Vec<String> = serde_json::from_value(loaded)?;
        assert!(
            loaded.iter().any(|url| url.ends_with(".wasm")),
            "no wasm loaded: {loaded:?}"
        );
        // The page's own files; API calls are resources too.
        let files = loaded.iter().filter(|url| {
            let path = url.split(['?', '#']).next().unwrap_or_default();
            [".js", ".css", ".wasm", ".svg", ".png", ".woff2"]
                .iter()
                .any(|ext| path.ends_with(ext))
        });
        for url in files {
            let file = url.rsplit('/').next().unwrap_or_default();
            let hashed = file
                .rsplit_once('.')
                .and_then(|(stem, _)| stem.rsplit_once('-'))
                .is_some_and(|(_, hash)| {
                    hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit())
                });
            assert!(
                url.contains("/assets/") && hashed,
                "{url} is not a hashed asset"
            );
        }
        browser.screenshot("sign-in").await?;
        failure.passed();
        browser.close().await?;
    }
    node.stop().await?;
    Ok(())
}
