//! Real browsers for end-to-end tests: one `chromedriver` per test, one headless Chromium per
//! session, each with a fresh profile directory.

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

    /// Opens a new headless Chromium session with its own profile.
    pub async fn session(&self) -> anyhow::Result<Browser> {
        let profile = std::env::temp_dir().join(format!("chat-e2e-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile)?;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium_path(), "args": args }),
        );
        let client = ClientBuilder::native()
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .context("cannot open a Chromium session")?;
        Ok(Browser {
            client: Some(client),
            profile,
        })
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
}

impl Browser {
    pub fn client(&self) -> anyhow::Result<&Client> {
        self.client
            .as_ref()
            .context("the browser session is closed")
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client()?.goto(url).await?;
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
