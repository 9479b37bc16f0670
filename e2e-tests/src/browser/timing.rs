//! Time to interactive: from the start of navigation to the page answering a user.

use super::Browser;
use crate::DEADLINE;
use anyhow::{bail, Context};
use std::time::Duration;

/// The sign-in screen is interactive when its user name field can be typed into and the app
/// has started: it replaced the page's own "loading…" status and did not report a failure (the
/// current client's index.html shows the form before the wasm runs; an app that renders the
/// form itself is ready once it exists).
pub const SIGN_IN_READY: &str = r#"
const name = document.querySelector('input[autocomplete="username"]');
const status = document.getElementById('status');
const text = status === null ? '' : status.textContent;
return name !== null && !name.disabled && text !== 'loading…' && !text.startsWith('cannot start');
"#;

/// The signed-in app is ready when its room list has loaded: the sidebar is drawn and no
/// longer says it is loading, so a room can be opened.
pub const SHELL_READY: &str = r#"
const rooms = document.getElementById('room-section');
return rooms !== null && !rooms.textContent.includes('Loading');
"#;

/// Polls `ready` (a script body returning a boolean) in the page every animation frame and
/// hands back `performance.now()` at the first true: milliseconds since navigation started.
const WAIT_READY: &str = r#"
const done = arguments[arguments.length - 1];
const ready = new Function(arguments[0]);
const poll = () => {
  let value = false;
  try { value = ready(); } catch (error) { value = false; }
  if (value) { done(performance.now()); } else { requestAnimationFrame(poll); }
};
poll();
"#;

/// Opens `url` and measures how long after navigation started `ready` first held.
pub async fn time_to_interactive(
    browser: &Browser,
    url: &str,
    ready: &str,
) -> anyhow::Result<Duration> {
    let client = browser.client()?;
    client.goto(url).await?;
    let waited = tokio::time::timeout(
        DEADLINE,
        client.execute_async(WAIT_READY, vec![serde_json::json!(ready)]),
    )
    .await;
    let millis = match waited {
        Ok(result) => result.context("cannot measure the page")?,
        Err(_) => bail!("{url} was not interactive within {DEADLINE:?}"),
    };
    let millis = millis
        .as_f64()
        .context("performance.now() was not a number")?;
    Ok(Duration::from_secs_f64(millis / 1000.0))
}
