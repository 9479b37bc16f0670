//! Accessibility scans with axe-core, injected into the page through WebDriver.
//!
//! The script comes from the npm package `axe-core`, installed outside the repository by
//! `cargo xtask test` (and `.ci/run`): `$AXE_CORE_JS`, or
//! `target/node/node_modules/axe-core/axe.min.js`.

use super::{target_dir, Browser};
use anyhow::{bail, Context};
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// The WCAG 2.1 A and AA rules.
const WCAG_TAGS: &[&str] = &["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];

/// Runs axe on the whole document and hands its violations back, trimmed to what an assertion
/// message needs. The last argument is WebDriver's callback for an asynchronous script.
const RUN_AXE: &str = r#"
const done = arguments[arguments.length - 1];
axe.run(document, { runOnly: { type: 'tag', values: arguments[0] }, resultTypes: ['violations'] })
  .then((results) => done({ violations: results.violations.map((v) => ({
    id: v.id,
    impact: v.impact,
    help: v.help,
    targets: v.nodes.map((node) => node.target.join(' ')),
  })) }))
  .catch((error) => done({ error: String(error) }));
"#;

/// Where the axe-core script is.
pub fn axe_core_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("AXE_CORE_JS") {
        return Ok(PathBuf::from(path));
    }
    Ok(target_dir()?
        .join("node")
        .join("node_modules")
        .join("axe-core")
        .join("axe.min.js"))
}

/// One rule the page breaks, with the elements that break it.
#[derive(Debug, Clone, Deserialize)]
pub struct Violation {
    /// The axe rule, e.g. `color-contrast`.
    pub id: String,
    /// `minor`, `moderate`, `serious` or `critical`.
    pub impact: Option<String>,
    pub help: String,
    /// CSS selectors of the offending elements.
    pub targets: Vec<String>,
}

/// The serious and critical violations on a page, printed one rule a line.
#[derive(Debug, Clone, Default)]
pub struct Violations(pub Vec<Violation>);

impl Violations {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The rule ids, for tests that expect particular ones.
    pub fn ids(&self) -> Vec<&str> {
        self.0.iter().map(|v| v.id.as_str()).collect()
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for violation in &self.0 {
            writeln!(
                f,
                "- {} ({}): {} at {}",
                violation.id,
                violation.impact.as_deref().unwrap_or("unknown"),
                violation.help,
                violation.targets.join(", ")
            )?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Outcome {
    violations: Option<Vec<Violation>>,
    error: Option<String>,
}

/// Scans the page as it is now against WCAG 2.1 A/AA and returns the serious and critical
/// violations.
pub async fn axe_scan(browser: &Browser) -> anyhow::Result<Violations> {
    let path = axe_core_path()?;
    let script = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read axe-core at {}; install it with \
             `npm install --prefix target/node axe-core` or run `cargo xtask test`",
            path.display()
        )
    })?;
    let client = browser.client()?;
    client
        .execute(&script, Vec::new())
        .await
        .context("cannot inject axe-core into the page")?;
    let outcome = client
        .execute_async(RUN_AXE, vec![serde_json::json!(WCAG_TAGS)])
        .await
        .context("axe-core did not run")?;
    let outcome: Outcome =
        serde_json::from_value(outcome).context("axe-core answered something unexpected")?;
    if let Some(error) = outcome.error {
        bail!("axe-core failed: {error}");
    }
    let serious = outcome
        .violations
        .unwrap_or_default()
        .into_iter()
        .filter(|v| matches!(v.impact.as_deref(), Some("serious" | "critical")))
        .collect();
    Ok(Violations(serious))
}

/// Fails, listing every rule and element, when the page has a serious or critical violation.
/// `screen` names the page in the message (and the screenshot saved beside it).
pub async fn expect_accessible(browser: &Browser, screen: &str) -> anyhow::Result<()> {
    let violations = axe_scan(browser).await?;
    if violations.is_empty() {
        return Ok(());
    }
    let shot = browser.screenshot(&format!("{screen}-axe")).await?;
    bail!(
        "{screen} at {} px has serious or critical accessibility violations (screenshot {}):\n{violations}",
        browser.viewport().width,
        shot.display()
    )
}
