//! `cargo xtask cluster status`, and RabbitMQ's tools run on a broker's host.

use super::brokers;
use super::hosts;
use super::net::{self, Role};
use super::state::{state_path, State};
use super::teardown::alive;
use anyhow::{bail, Context, Result};
use std::path::Path;

pub fn status(root: &Path) -> Result<()> {
    let state = State::load(&state_path(root)?)?;
    let cluster = state.cluster(root);
    let namespaces = net::existing_namespaces()?;
    println!(
        "cluster at {} (up took {:.1} s), files in {}",
        if state.url.is_empty() {
            "(not finished)"
        } else {
            &state.url
        },
        state.up_seconds,
        state.run_dir.display()
    );
    for host in &cluster.hosts {
        let netns = if namespaces.contains(&host.netns()) {
            "namespace ok"
        } else {
            "NO NAMESPACE"
        };
        let processes: Vec<String> = state
            .processes
            .iter()
            .filter(|process| process.host == host.name)
            .map(|process| {
                format!(
                    "{} pid {} {}",
                    process.what,
                    process.pid,
                    if alive(i32::try_from(process.pid).unwrap_or(i32::MAX)) {
                        "running"
                    } else {
                        "GONE"
                    }
                )
            })
            .collect();
        let ready = match host.role {
            Role::Node(_) => ready_text(host.socket(hosts::NODE_PORT)),
            Role::Balancer => ready_text(host.socket(hosts::BALANCER_PORT)),
            _ => String::new(),
        };
        println!(
            "  {:<10} {:<12} {netns:<13} {}{ready}",
            host.name,
            host.address.to_string(),
            processes.join(", ")
        );
    }
    match cluster
        .brokers()
        .first()
        .map(|first| brokers::running_brokers(&cluster, first))
    {
        Some(Ok(running)) => println!("  rabbitmq running nodes: {}", running.join(", ")),
        Some(Err(e)) => println!("  rabbitmq: cluster_status failed: {e:#}"),
        None => {}
    }
    match brokers::queues(&cluster) {
        Ok(queues) => {
            for (name, kind, members) in queues {
                let replicas = if kind == "quorum" {
                    format!("{members} members")
                } else {
                    String::new()
                };
                println!("  queue {name:<24} {kind:<8} {replicas}");
            }
        }
        Err(e) => println!("  rabbitmq: list_queues failed: {e:#}"),
    }
    Ok(())
}

fn ready_text(address: std::net::SocketAddrV4) -> String {
    match hosts::http_status(address, "/readyz") {
        Some(200) => ", /readyz 200".into(),
        Some(code) => format!(", /readyz {code}"),
        None => ", /readyz UNREACHABLE".into(),
    }
}

pub fn rabbitmq(root: &Path, broker: u8, args: &[String]) -> Result<()> {
    let state = State::load(&state_path(root)?)?;
    let cluster = state.cluster(root);
    let host = cluster.host(Role::Broker(broker))?;
    let (tool, rest) = args.split_first().context("name a RabbitMQ tool")?;
    if !tool.starts_with("rabbitmq") {
        bail!(
            "{tool} is not a RabbitMQ tool (rabbitmqctl, rabbitmq-queues, rabbitmq-diagnostics…)"
        );
    }
    let status = brokers::broker_tool(&cluster, host, tool)
        .args(rest)
        .status()
        .with_context(|| format!("cannot run {tool}"))?;
    if !status.success() {
        bail!("{tool} failed ({status})");
    }
    Ok(())
}
