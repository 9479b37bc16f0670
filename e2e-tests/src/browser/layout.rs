//! Layout checks: what a phone user would notice first.

use super::Browser;
use anyhow::{bail, Context};
use serde::Deserialize;

/// The smallest share of the viewport's width the main column may take.
pub const MIN_COLUMN_SHARE: f64 = 0.9;

const MEASURE: &str = r#"
const element = document.querySelector(arguments[0]);
return {
  scroll_width: document.documentElement.scrollWidth,
  inner_width: window.innerWidth,
  element_width: element ? element.getBoundingClientRect().width : null,
};
"#;

#[derive(Debug, Deserialize)]
struct Measures {
    scroll_width: f64,
    inner_width: f64,
    element_width: Option<f64>,
}

/// Fails unless the page scrolls only vertically and `column` (a CSS selector) is at least
/// [`MIN_COLUMN_SHARE`] of the viewport's width.
///
/// Widths are compared with the session's screen width, not `innerWidth`: a phone widens its
/// layout viewport to fit content that overflows (and zooms out), so there `innerWidth` grows
/// with the very overflow being looked for.
pub async fn layout_check(browser: &Browser, column: &str) -> anyhow::Result<()> {
    let measures = browser
        .client()?
        .execute(MEASURE, vec![serde_json::json!(column)])
        .await
        .context("cannot measure the page")?;
    let measures: Measures = serde_json::from_value(measures)?;
    let screen = f64::from(browser.viewport().width);
    let mut problems = Vec::new();
    if measures.scroll_width > screen || measures.inner_width > screen {
        problems.push(format!(
            "the page scrolls sideways: {} px of content (a {} px layout viewport) on a {screen} px screen",
            measures.scroll_width, measures.inner_width
        ));
    }
    match measures.element_width {
        None => problems.push(format!("no element matches {column}")),
        Some(width) if width < measures.inner_width * MIN_COLUMN_SHARE => problems.push(format!(
            "{column} is {width} px wide, under {:.0} % of the {} px viewport",
            MIN_COLUMN_SHARE * 100.0,
            measures.inner_width
        )),
        Some(_) => {}
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "layout at {} px: {}",
        browser.viewport().width,
        problems.join("; ")
    )
}
