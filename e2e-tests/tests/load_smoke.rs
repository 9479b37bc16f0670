//! A few seconds of the `rooms` load workload against two in-process nodes: the load generator
//! works end to end, and under load every member sees every message once, in order.
//! Not a benchmark: nothing here is timed.

// A node's future, spawned here, is deep enough that proving it `Send` needs more than the
// default 128 steps.
#![recursion_limit = "256"]

use chat_load::identity::AccountBook;
use chat_load::{run_rooms, Dialer, Node, Pace, RoomsConfig, Target};
use e2e_tests::{TestEnv, TestNode};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_rooms_run_loses_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut nodes = Vec::new();
    for node_id in ["load-1", "load-2"] {
        let mut config = env.config(node_id);
        // The load shares a few source addresses; per-address limits are not under test here.
        config.send_rate_per_ip = 1_000_000;
        config.send_burst_per_ip = 1_000_000;
        config.login_attempts_per_ip = 1_000_000;
        nodes.push(TestNode::start(config).await?);
    }
    let target = Target {
        nodes: nodes
            .iter()
            .map(|node| Node {
                name: node.node_id.clone(),
                addr: node.addr,
                pid: None,
                metrics: Some(node.metrics_addr),
            })
            .collect(),
        accounts: Arc::new(AccountBook::default()),
        dialer: Arc::new(Dialer::loopback(2)),
        progress: false,
    };
    let config = RoomsConfig {
        users: 20,
        rooms: 4,
        members: 5,
        pace: Pace::Rate(200.0),
        duration: Duration::from_secs(3),
        drain: Duration::from_secs(15),
        ..RoomsConfig::default()
    };
    let report = run_rooms(&target, &config, "smoke").await?;
    println!("{}", report.summary());

    assert!(report.totals.sent > 0, "nothing was sent");
    assert_eq!(report.totals.refused, 0, "sends were refused");
    assert_eq!(report.totals.accepted, report.totals.sent);
    assert!(
        report.drained,
        "acks or deliveries still missing after the drain"
    );
    let checks = report.checks;
    assert_eq!(
        (
            checks.lost,
            checks.duplicated,
            checks.out_of_order,
            checks.unconfirmed
        ),
        (0, 0, 0, 0),
        "lost, duplicated, out of order, unconfirmed"
    );
    assert_eq!(
        report.totals.delivered,
        report.totals.stored * config.members as u64,
        "every stored message reaches each member of its room once"
    );
    let stored = report.stages.iter().find(|stage| stage.stage == "store");
    assert_eq!(
        stored.map(|stage| stage.count),
        Some(report.totals.stored),
        "the nodes' stage metrics account for every stored message: {:?}",
        report.stages
    );
    let Some(host) = report.host.as_ref() else {
        anyhow::bail!("the report does not describe the machine");
    };
    assert!(
        host.busy_percent
            .is_some_and(|busy| (0.0..=100.0).contains(&busy)),
        "the report says how busy the cores were: {host:?}"
    );
    // Two nodes, RabbitMQ and PostgreSQL exchanged every message of the run: the kernel
    // switched between their threads.
    assert!(
        host.switches_per_s.is_some_and(|rate| rate > 0.0),
        "the report counts the machine's context switches: {host:?}"
    );
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}
