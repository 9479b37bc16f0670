//! Real browsers for end-to-end tests: one `chromedriver` per test, one headless Chromium per
//! session, each with a fresh profile directory, at a desktop or a phone's size.
//!
//! The checks a test makes on a page, one module per kind: [`axe`] (accessibility, with
//! axe-core), [`layout`] (no horizontal scroll, a column's width), [`timing`] (time to
//! interactive). [`Browser::screenshot`] writes PNGs under `target/screenshots/<width>/`, and
//! [`Browser::screenshot_on_failure`] one when a test ends without passing.

pub mod axe;
pub mod layout;
pub mod timing;

pub use axe::{axe_scan, expect_accessible, Violations};
pub use layout::layout_check;
pub use timing::time_to_interactive;

use crate::DEADLINE;
use anyhow::{bail, Context};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Flags Chromium needs to run headless as root on a machine without outside network access.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// The size a page is shown at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    /// A phone: Chromium emulates a mobile device (touch, the page's `<meta name=viewport>`
    /// honoured) instead of only sizing a desktop window.
    pub mobile: bool,
}

impl Viewport {
    /// A laptop screen.
    pub const DESKTOP: Viewport = Viewport {
        width: 1280,
        height: 800,
        mobile: false,
    };
    /// A common phone (iPhone 12 to 15) held upright.
    pub const PHONE: Viewport = Viewport {
        width: 390,
        height: 844,
        mobile: true,
    };
    /// Both, for tests that check every screen at each.
    pub const ALL: [Viewport; 2] = [Viewport::DESKTOP, Viewport::PHONE];
}

fn chromedriver_path() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

fn chromium_path() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// A running chromedriver; killed on drop.
pub struct Driver {
    process: Child,
    port: u16,
}

impl Driver {
    pub async fn start() -> anyhow::Result<Driver> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let process = Command::new(chromedriver_path())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}; install it with `apt-get install -y chromium chromium-driver`",
                    chromedriver_path()
                )
            })?;
        let driver = Driver { process, port };
        let status = format!("http://127.0.0.1:{port}/status");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(response) = http.get(&status).send().await {
                if response.status().is_success() {
                    return Ok(driver);
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("chromedriver did not start on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens a new headless Chromium session with its own profile, at desktop size.
    pub async fn session(&self) -> anyhow::Result<Browser> {
        self.session_at(Viewport::DESKTOP).await
    }

    /// Opens a new headless Chromium session with its own profile, showing pages at `viewport`.
    pub async fn session_at(&self, viewport: Viewport) -> anyhow::Result<Browser> {
        let profile = std::env::temp_dir().join(format!("chat-e2e-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile)?;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push(format!(
            "--window-size={},{}",
            viewport.width, viewport.height
        ));
        let mut options = serde_json::json!({ "binary": chromium_path(), "args": args });
        if viewport.mobile {
            // chromedriver applies this through the DevTools protocol
            // (Emulation.setDeviceMetricsOverride), for every page of the session.
            options["mobileEmulation"] = serde_json::json!({
                "deviceMetrics": {
                    "width": viewport.width,
                    "height": viewport.height,
                    "pixelRatio": 1.0,
                    "touch": true,
                    "mobile": true,
                },
            });
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::native()
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .context("cannot open a Chromium session")?;
        let browser = Browser {
            client: Some(client),
            profile,
            viewport,
        };
        if !viewport.mobile {
            browser.size_viewport().await?;
        }
        Ok(browser)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// One browser session. Call [`Browser::close`] to end it cleanly.
pub struct Browser {
    client: Option<Client>,
    profile: PathBuf,
    viewport: Viewport,
}

impl Browser {
    pub fn client(&self) -> anyhow::Result<&Client> {
        self.client
            .as_ref()
            .context("the browser session is closed")
    }

    pub fn viewport(&self) -> Viewport {
        self.viewport
    }

    /// The page's viewport (`innerWidth` × `innerHeight`), in CSS pixels.
    pub async fn inner_size(&self) -> anyhow::Result<(u32, u32)> {
        let size = self
            .client()?
            .execute(
                "return [window.innerWidth, window.innerHeight];",
                Vec::new(),
            )
            .await?;
        let size: (u32, u32) = serde_json::from_value(size).context("the viewport's size")?;
        Ok(size)
    }

    /// Sizes the window so that the page's viewport, not the window, is exactly the
    /// viewport's size: WebDriver sizes the window, and whatever the browser draws around the
    /// page (nothing in some headless modes, a frame in others) comes off it.
    async fn size_viewport(&self) -> anyhow::Result<()> {
        let Viewport { width, height, .. } = self.viewport;
        let client = self.client()?;
        client
            .set_window_size(width, height)
            .await
            .context("cannot size the browser window")?;
        let (inner_width, inner_height) = self.inner_size().await?;
        if (inner_width, inner_height) != (width, height) {
            let grow = |want: u32, got: u32| (want + want).saturating_sub(got);
            client
                .set_window_size(grow(width, inner_width), grow(height, inner_height))
                .await
                .context("cannot size the browser window")?;
        }
        let inner = self.inner_size().await?;
        if inner != (width, height) {
            bail!(
                "the page shows {}×{} CSS pixels, not {width}×{height}",
                inner.0,
                inner.1
            );
        }
        Ok(())
    }

    /// Saves what the page shows as `target/screenshots/<width>/<name>.png` and returns the path.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let png = self.client()?.screenshot().await?;
        save_screenshot(self.viewport, name, &png)
    }

    /// A guard that saves a screenshot named `<name>-failed` if it is dropped before
    /// [`FailureScreenshot::passed`]: when the test panics or returns an error early.
    pub fn screenshot_on_failure(&self, name: &str) -> anyhow::Result<FailureScreenshot> {
        Ok(FailureScreenshot {
            client: Some(self.client()?.clone()),
            viewport: self.viewport,
            name: format!("{name}-failed"),
        })
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client()?.goto(url).await?;
        Ok(())
    }

    /// Creates the account `name` (password `<name>-password`) through the sign-in screen the
    /// page shows, and waits for the app shell.
    pub async fn register(&self, name: &str) -> anyhow::Result<()> {
        self.wait_for("#auth-switch").await?.click().await?;
        self.wait_for_text("#auth-submit", "Create account").await?;
        self.fill("#auth-username", name).await?;
        self.fill("#auth-password", &format!("{name}-password"))
            .await?;
        self.wait_for("#auth-submit").await?.click().await?;
        self.wait_for("#sidebar").await?;
        Ok(())
    }

    /// Types into an input found by CSS selector.
    pub async fn fill(&self, selector: &str, text: &str) -> anyhow::Result<()> {
        let element = self.wait_for(selector).await?;
        element.clear().await?;
        element.send_keys(text).await?;
        Ok(())
    }

    /// Waits for an element to exist and returns it.
    pub async fn wait_for(&self, selector: &str) -> anyhow::Result<fantoccini::elements::Element> {
        let element = self
            .client()?
            .wait()
            .at_most(DEADLINE)
            .for_element(Locator::Css(selector))
            .await
            .with_context(|| format!("no element {selector} in time"))?;
        Ok(element)
    }

    /// Waits until the element's text contains `needle`.
    pub async fn wait_for_text(&self, selector: &str, needle: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client()?.find(Locator::Css(selector)).await {
                last = element.text().await.unwrap_or_default();
                if last.contains(needle) {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{selector} never contained {needle:?}; last text {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the element's text no longer contains `needle` (or the element is gone).
    pub async fn wait_without_text(&self, selector: &str, needle: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let text = match self.client()?.find(Locator::Css(selector)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if !text.contains(needle) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{selector} still contains {needle:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until exactly `count` elements match the selector.
    pub async fn wait_for_count(&self, selector: &str, count: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let found = self.client()?.find_all(Locator::Css(selector)).await?.len();
            if found == count {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{found} elements match {selector}, not {count}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the element is shown (it exists and is not hidden).
    pub async fn is_displayed(&self, selector: &str) -> anyhow::Result<bool> {
        match self.client()?.find(Locator::Css(selector)).await {
            Ok(element) => Ok(element.is_displayed().await?),
            Err(_) => Ok(false),
        }
    }

    /// The values of an attribute on every element matching the selector.
    pub async fn attributes(&self, selector: &str, name: &str) -> anyhow::Result<Vec<String>> {
        let mut values = Vec::new();
        for element in self.client()?.find_all(Locator::Css(selector)).await? {
            values.push(element.attr(name).await?.unwrap_or_default());
        }
        Ok(values)
    }

    /// The texts of every element matching the selector.
    pub async fn texts(&self, selector: &str) -> anyhow::Result<Vec<String>> {
        let mut texts = Vec::new();
        for element in self.client()?.find_all(Locator::Css(selector)).await? {
            texts.push(element.text().await?);
        }
        Ok(texts)
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        if let Some(client) = self.client.take() {
            client.close().await?;
        }
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Where screenshots go: `$CHAT_SCREENSHOT_DIR`, or `screenshots/` in the target directory.
pub fn screenshot_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CHAT_SCREENSHOT_DIR") {
        return Ok(PathBuf::from(dir));
    }
    Ok(target_dir()?.join("screenshots"))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, or `target/` at the workspace root.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .context("the test crate has no parent directory")?;
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        // A relative one is taken from the workspace root, where cargo is usually run.
        Some(dir) => root.join(dir),
        None => root.join("target"),
    })
}

fn save_screenshot(viewport: Viewport, name: &str, png: &[u8]) -> anyhow::Result<PathBuf> {
    let dir = screenshot_dir()?.join(viewport.width.to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Saves a screenshot when dropped before [`FailureScreenshot::passed`] is called.
pub struct FailureScreenshot {
    client: Option<Client>,
    viewport: Viewport,
    name: String,
}

impl FailureScreenshot {
    /// The test got this far: no screenshot.
    pub fn passed(mut self) {
        self.client = None;
    }
}

impl Drop for FailureScreenshot {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        // Drop cannot await: block this worker while another one drives the WebDriver
        // connection, which only a multi-threaded runtime can do (every browser test uses one).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            eprintln!(
                "no failure screenshot {}: the test runtime is single-threaded",
                self.name
            );
            return;
        }
        let (viewport, name) = (self.viewport, self.name.clone());
        tokio::task::block_in_place(|| {
            runtime.block_on(async move {
                match tokio::time::timeout(DEADLINE, client.screenshot()).await {
                    Ok(Ok(png)) => match save_screenshot(viewport, &name, &png) {
                        Ok(path) => eprintln!("screenshot of the failure: {}", path.display()),
                        Err(error) => eprintln!("cannot save the failure screenshot: {error:#}"),
                    },
                    Ok(Err(error)) => eprintln!("cannot take the failure screenshot: {error}"),
                    Err(_) => eprintln!("the failure screenshot took too long"),
                }
            })
        });
    }
}
