//! The operations kit in `docker/ops/`: promtool accepts the scrape configuration, the alert
//! rules and their unit tests, and a running node exports every metric that the rules and the
//! Grafana dashboard read.

use anyhow::{bail, ensure, Context};
use e2e_tests::{TestEnv, DEADLINE};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Series that Prometheus makes itself for every target rather than reading them from it.
const SYNTHETIC: &[&str] = &["up"];

fn ops_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker/ops")
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_alert_rules() -> anyhow::Result<()> {
    let checks: [&[&str]; 3] = [
        &["check", "config", "prometheus.yml"],
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts.test.yml"],
    ];
    for args in checks {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(ops_dir())
            .output()
            .context("promtool is missing: apt-get install prometheus")?;
        ensure!(
            output.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_exports_every_metric_the_rules_and_the_dashboard_use() -> anyhow::Result<()> {
    let used = used_metrics()?;
    ensure!(
        used.len() > 10,
        "too few metrics found in docker/ops: {used:?}"
    );

    let env = TestEnv::new().await?;
    let node = env.start_node("ops-kit").await?;
    // A room, a message stored and delivered: the labelled series exist once they happened.
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("ops").await?;
    ada.send_message(room, "m1", "hello").await?;
    ada.next_message(room).await?;
    let api = ada.api()?.clone();
    let reply = api.get(&format!("/api/rooms/{room}")).await?;
    ensure!(reply.status == 200, "{} {}", reply.status, reply.body);

    let deadline = tokio::time::Instant::now() + DEADLINE;
    let text = loop {
        let text = api.metrics_text().await?;
        let exported = exported_metrics(&text);
        let missing: Vec<&String> = used
            .iter()
            .filter(|name| !exported.contains(name.as_str()))
            .collect();
        if missing.is_empty() {
            break text;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the node does not export {missing:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Requests are labelled by route template, never by raw path.
    let series =
        r#"chat_http_requests_total{method="GET",route="/api/rooms/{room_id}",status="200"}"#;
    ensure!(text.contains(series), "no {series} in\n{text}");
    ensure!(
        !text.contains(&format!("/api/rooms/{room}\"")),
        "a raw path is a label"
    );
    ensure!(text.contains("chat_ready 1"), "the node is ready");
    ensure!(
        text.contains("chat_bus_connected 1"),
        "the node is connected"
    );

    drop(ada);
    node.stop().await
}

/// Every metric name the alert rules and the dashboard's panels read.
fn used_metrics() -> anyhow::Result<BTreeSet<String>> {
    let mut expressions = Vec::new();
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(ops_dir().join("alerts.yml"))?)?;
    for group in rules["groups"].as_sequence().context("no rule groups")? {
        for rule in group["rules"]
            .as_sequence()
            .context("a group without rules")?
        {
            expressions.push(
                rule["expr"]
                    .as_str()
                    .context("a rule without expr")?
                    .to_owned(),
            );
        }
    }
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        ops_dir().join("grafana-dashboard.json"),
    )?)?;
    for panel in dashboard["panels"].as_array().context("no panels")? {
        let targets = panel["targets"]
            .as_array()
            .context("a panel without targets")?;
        ensure!(
            !targets.is_empty(),
            "panel {} has no queries",
            panel["title"]
        );
        for target in targets {
            expressions.push(
                target["expr"]
                    .as_str()
                    .context("a query without expr")?
                    .to_owned(),
            );
        }
    }
    let mut names = BTreeSet::new();
    for expression in &expressions {
        let tokens: Vec<&str> = expression
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        let metrics: Vec<&str> = tokens
            .iter()
            .copied()
            .filter(|token| token.starts_with("chat_") || token.starts_with("process_"))
            .collect();
        ensure!(
            !metrics.is_empty() || tokens.iter().any(|token| SYNTHETIC.contains(token)),
            "no metric found in {expression:?}"
        );
        names.extend(metrics.into_iter().map(str::to_owned));
    }
    Ok(names)
}

/// The names of the samples in a `/metrics` page (`chat_delivery_seconds_bucket`…).
fn exported_metrics(text: &str) -> BTreeSet<&str> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .filter(|name| !name.is_empty())
        .collect()
}
