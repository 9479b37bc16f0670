//! The RabbitMQ brokers: each with its own node name (`rabbit@<address>`, long names), data,
//! logs, configuration, `rabbitmq-env.conf` and epmd, all sharing one Erlang cookie; clustered
//! by `classic_config`, with the quorum queues then given a replica on every broker.

use super::hosts::{chown, read, spawn, wait_until, Cluster, Started};
use super::net::{self, Host};
use super::templates;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// Writes a broker's files: Erlang cookie, configuration, environment file, plugins, and the
/// quorum definitions every broker loads.
pub fn configure_broker(cluster: &Cluster, host: &Host) -> Result<()> {
    let dir = cluster.dir(host);
    for sub in ["home", "mnesia", "log"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let definitions = cluster.definitions();
    if !definitions.exists() {
        std::fs::write(
            &definitions,
            templates::quorum_definitions_text(&cluster.root)?,
        )?;
        std::fs::set_permissions(&definitions, std::fs::Permissions::from_mode(0o644))?;
    }
    let cookie = dir.join("home/.erlang.cookie");
    std::fs::write(&cookie, &cluster.erlang_cookie)?;
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))?;

    let names: Vec<String> = cluster
        .brokers()
        .into_iter()
        .map(Cluster::broker_name)
        .collect();
    let shipped = read(&cluster.root.join("rabbitmq/rabbitmq.conf"))?;
    let conf = templates::rabbitmq_conf(
        &shipped,
        &templates::Broker {
            address: host.address,
            definitions: &definitions,
            cluster: &names,
        },
    )?;
    std::fs::write(dir.join("rabbitmq.conf"), conf)?;
    std::fs::write(
        dir.join("rabbitmq-env.conf"),
        templates::rabbitmq_env(host.address, &dir),
    )?;
    std::fs::copy(
        cluster.root.join("rabbitmq/enabled_plugins"),
        dir.join("enabled_plugins"),
    )?;
    chown(&dir, "rabbitmq")
}

/// A RabbitMQ tool (`rabbitmqctl`, `rabbitmq-diagnostics`, `rabbitmq-queues`…) run on a
/// broker's host, with the broker's cookie and environment file.
pub fn broker_tool(cluster: &Cluster, host: &Host, tool: &str) -> Command {
    let dir = cluster.dir(host);
    let mut command = net::command_in(
        host,
        Some("rabbitmq"),
        &format!("{}/{tool}", net::RABBITMQ_BIN),
    );
    command
        .env("HOME", dir.join("home"))
        .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
        .current_dir(&dir);
    command
}

/// Starts epmd on the broker's address (and the namespace's loopback), then the broker.
pub fn start_broker(cluster: &Cluster, host: &Host) -> Result<Started> {
    let dir = cluster.dir(host);
    let mut epmd = net::command_in(host, Some("rabbitmq"), "epmd");
    epmd.env("HOME", dir.join("home")).args([
        "-daemon",
        "-address",
        &format!("{},127.0.0.1", host.address),
    ]);
    net::output(&mut epmd).context("cannot start epmd")?;
    restart_broker(cluster, host)
}

/// Starts the broker again after it died; its epmd still runs.
pub fn restart_broker(cluster: &Cluster, host: &Host) -> Result<Started> {
    let dir = cluster.dir(host);
    let mut server = broker_tool(cluster, host, "rabbitmq-server");
    spawn(
        host,
        "rabbitmq-server",
        &mut server,
        &dir.join("server.log"),
    )
}

/// Waits until the broker's application runs (it has joined its cluster by then).
pub fn wait_broker(cluster: &Cluster, host: &Host, started: &mut Started) -> Result<()> {
    wait_until(started, Duration::from_secs(120), || {
        net::quiet(broker_tool(cluster, host, "rabbitmq-diagnostics").args(["-q", "check_running"]))
    })
}

/// The brokers the cluster reports running, as seen from `host`.
pub fn running_brokers(cluster: &Cluster, host: &Host) -> Result<Vec<String>> {
    let json = net::output(broker_tool(cluster, host, "rabbitmqctl").args([
        "-q",
        "cluster_status",
        "--formatter",
        "json",
    ]))?;
    let status: serde_json::Value =
        serde_json::from_str(&json).context("rabbitmqctl cluster_status is not JSON")?;
    Ok(status["running_nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|node| node.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Waits until every broker runs in one cluster.
pub fn wait_clustered(cluster: &Cluster, within: Duration) -> Result<Vec<String>> {
    let brokers = cluster.brokers();
    let first = brokers.first().context("no brokers")?;
    let deadline = Instant::now() + within;
    loop {
        let running = running_brokers(cluster, first).unwrap_or_default();
        if running.len() == brokers.len() {
            return Ok(running);
        }
        if super::interrupted() {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!(
                "the brokers did not form one cluster within {within:?}: {} reports {running:?} \
                 running",
                Cluster::broker_name(first)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Adds a replica on every other broker to each quorum queue. The definitions are loaded when
/// the first broker boots, before the others join, and a quorum queue gets its members when it
/// is declared: without this the ingest shards would live on the first broker alone.
pub fn grow_quorum_queues(cluster: &Cluster) -> Result<()> {
    let brokers = cluster.brokers();
    let first = brokers.first().context("no brokers")?;
    for other in brokers.iter().skip(1) {
        net::output(broker_tool(cluster, first, "rabbitmq-queues").args([
            "-q",
            "grow",
            &Cluster::broker_name(other),
            "all",
        ]))
        .with_context(|| {
            format!(
                "cannot add replicas on {} to the quorum queues",
                Cluster::broker_name(other)
            )
        })?;
    }
    Ok(())
}

/// Each queue of the brokers with its type and, for quorum queues, its members.
pub fn queues(cluster: &Cluster) -> Result<Vec<(String, String, usize)>> {
    let first = *cluster.brokers().first().context("no brokers")?;
    let json = net::output(broker_tool(cluster, first, "rabbitmqctl").args([
        "-q",
        "list_queues",
        "name",
        "type",
        "members",
        "--formatter",
        "json",
    ]))?;
    let list: serde_json::Value =
        serde_json::from_str(&json).context("rabbitmqctl list_queues is not JSON")?;
    Ok(list
        .as_array()
        .map(|queues| {
            queues
                .iter()
                .map(|queue| {
                    (
                        queue["name"].as_str().unwrap_or("?").to_owned(),
                        queue["type"].as_str().unwrap_or("?").to_owned(),
                        queue["members"].as_array().map_or(0, Vec::len),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}
