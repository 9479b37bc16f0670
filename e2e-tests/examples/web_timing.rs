//! Time to interactive of the built web client (`web-client/dist`, or `CHAT_WEB_DIR`), served by
//! one node, in headless Chromium, at desktop and phone size: a first visit (nothing cached) to
//! the sign-in form, a return visit (assets from the cache, `index.html` revalidated) to it, and
//! a signed-in return visit to the room list. Each figure runs from navigation start
//! (`performance.now()` is 0 there) to the first animation frame in which the page is ready.
//!
//! `cargo xtask web-bench` builds the release client, runs this and records the table in
//! BENCHMARKS.md; by hand: `cargo xtask web --release && cargo run --release -p e2e-tests
//! --example web_timing [samples]`.
//!
//! Needs the local PostgreSQL and RabbitMQ, Chromium and chromedriver.

// A node's future runs in this process; its type is deeper than the default limit allows.
#![recursion_limit = "256"]

use e2e_tests::browser::timing::{SHELL_READY, SIGN_IN_READY};
use e2e_tests::browser::{time_to_interactive, Driver, Viewport};
use e2e_tests::TestEnv;
use std::time::Duration;

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn millis(duration: Duration) -> String {
    format!("{:.0} ms", duration.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> anyhow::Result<()> {
    let samples: usize = match std::env::args().nth(1) {
        Some(count) => count.parse()?,
        None => 10,
    };
    eprintln!("web client: {}", e2e_tests::services::web_dir()?.display());
    let env = TestEnv::new().await?;
    let node = env.start_node("web-timing").await?;
    let url = node.http_url();
    let driver = Driver::start().await?;

    println!(
        "| width | first visit: sign-in form, median | slowest | return visit: sign-in form, median | signed in: room list, median |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for viewport in Viewport::ALL {
        let (mut first, mut again, mut signed_in) = (Vec::new(), Vec::new(), Vec::new());
        for sample in 0..samples {
            // A new profile each time: nothing cached, as on a first visit.
            let browser = driver.session_at(viewport).await?;
            first.push(time_to_interactive(&browser, &url, SIGN_IN_READY).await?);
            browser.goto("about:blank").await?;
            again.push(time_to_interactive(&browser, &url, SIGN_IN_READY).await?);
            browser
                .register(&format!("timing{}x{sample}", viewport.width))
                .await?;
            browser.goto("about:blank").await?;
            signed_in.push(time_to_interactive(&browser, &url, SHELL_READY).await?);
            browser.close().await?;
        }
        let slowest = first.iter().max().copied().unwrap_or_default();
        println!(
            "| {} px | {} | {} | {} | {} |",
            viewport.width,
            millis(median(&mut first)),
            millis(slowest),
            millis(median(&mut again)),
            millis(median(&mut signed_in)),
        );
    }
    node.stop().await?;
    Ok(())
}
