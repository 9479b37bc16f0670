//! `cargo xtask web-bench`: the web client as a visitor gets it. Builds the release client,
//! measures every asset as served (raw, gzip, brotli), then its time to interactive in headless
//! Chromium (the `web_timing` example of `e2e-tests`: one node on loopback serving the built
//! client, from navigation start to a usable page), and writes both into `BENCHMARKS.md`
//! between the `web:begin` and `web:end` markers, with the machine they were measured on.

use crate::{bench, services, web};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Stdio;

const BEGIN_MARKER: &str = "<!-- web:begin -->";
const END_MARKER: &str = "<!-- web:end -->";
/// The target for the wasm a first visit downloads, compressed as served.
const WASM_BUDGET_BYTES: u64 = 400_000;

pub fn web_bench(root: &Path, samples: u32) -> Result<()> {
    services::ensure_all()?;
    services::ensure_browser()?;
    let dist = web::build_web_client(root, true)?;
    let sizes = web::asset_sizes(&dist)?;
    let load = bench::load_average();
    let cpu_before = bench::cpu_check();
    println!("measuring time to interactive, {samples} samples at each width");
    let output = crate::cargo()
        .current_dir(root)
        .args([
            "run",
            "--release",
            "-p",
            "e2e-tests",
            "--example",
            "web_timing",
            "--",
        ])
        .arg(samples.to_string())
        .env("CHAT_WEB_DIR", &dist)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the web_timing example")?;
    let printed = String::from_utf8_lossy(&output.stdout);
    print!("{printed}");
    if !output.status.success() {
        bail!("the web_timing example failed ({})", output.status);
    }
    let cpu_after = bench::cpu_check();
    let timing: Vec<&str> = printed
        .lines()
        .filter(|line| line.starts_with('|'))
        .collect();
    if timing.is_empty() {
        bail!("the web_timing example printed no table");
    }

    let section = format!(
        "Command: `cargo xtask web-bench --samples {samples}` — {}, {}\n\n\
         Machine: {}; load average before: {load}; CPU check (one core, a fixed loop, best of \
         five): {cpu_before:.1} ms before, {cpu_after:.1} ms after.\n\n\
         {}\n\n{}",
        bench::now_utc(),
        bench::code_version(root),
        bench::machine(),
        size_table(&sizes),
        timing.join("\n"),
    );
    println!("\n{section}");
    bench::rewrite_section(
        &root.join("BENCHMARKS.md"),
        (BEGIN_MARKER, END_MARKER),
        &section,
    )?;
    println!("BENCHMARKS.md updated (web client section)");
    Ok(())
}

/// The assets as Markdown, with their total and whether the wasm meets its budget.
fn size_table(sizes: &[web::AssetSize]) -> String {
    let bytes = |b: Option<u64>| b.map_or("-".to_owned(), thousands);
    let mut lines = vec![
        "| asset | raw | gzip | brotli |".to_owned(),
        "| --- | ---: | ---: | ---: |".to_owned(),
    ];
    for asset in sizes {
        lines.push(format!(
            "| `{}` | {} | {} | {} |",
            asset.name,
            thousands(asset.raw),
            bytes(asset.gzip),
            bytes(asset.brotli)
        ));
    }
    let total =
        |pick: fn(&web::AssetSize) -> Option<u64>| -> u64 { sizes.iter().filter_map(pick).sum() };
    lines.push(format!(
        "| all | {} | {} | {} |",
        thousands(sizes.iter().map(|asset| asset.raw).sum()),
        thousands(total(|asset| asset.gzip)),
        thousands(total(|asset| asset.brotli)),
    ));
    let wasm = sizes
        .iter()
        .find(|asset| asset.name.ends_with(".wasm"))
        .and_then(|asset| asset.gzip.max(asset.brotli));
    let verdict = match wasm {
        Some(bytes) if bytes < WASM_BUDGET_BYTES => format!("met: {} at most", thousands(bytes)),
        Some(bytes) => format!("**not met**: {}", thousands(bytes)),
        None => "no wasm found".to_owned(),
    };
    format!(
        "{}\n\nTarget: the wasm under {} compressed (gzip and brotli): {verdict}.",
        lines.join("\n"),
        thousands(WASM_BUDGET_BYTES)
    )
}

/// `1234567` as `1,234,567 B`.
fn thousands(bytes: u64) -> String {
    let digits = bytes.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    format!("{out} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_thousands_separators() {
        assert_eq!(thousands(0), "0 B");
        assert_eq!(thousands(999), "999 B");
        assert_eq!(thousands(1_000), "1,000 B");
        assert_eq!(thousands(1_612_081), "1,612,081 B");
    }
}
