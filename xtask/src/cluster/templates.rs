//! The cluster's configuration files, made from the ones the deployment ships: the quorum
//! variant of `rabbitmq/definitions.json`, `rabbitmq/rabbitmq.conf` with this host's addresses
//! and paths, and `docker/nginx.conf` with a fixed upstream instead of Docker's DNS.
//!
//! Every edit of a shipped file names the exact line it replaces and fails when that line is
//! gone, so a change to the shipped file cannot silently give the cluster another setup.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::net::Ipv4Addr;
use std::path::Path;

/// The deployer's definitions, relative to the workspace root.
pub const CLASSIC_DEFINITIONS: &str = "rabbitmq/definitions.json";
/// Their variant for a replicated cluster, written by `cargo xtask cluster definitions`.
pub const QUORUM_DEFINITIONS: &str = "rabbitmq/definitions.quorum.json";

/// The delivery limit the nodes give quorum ingest queues by default (`CHAT_DELIVERY_LIMIT`);
/// `backend/src/bus/topology.rs` checks the quorum file against its own default.
const DELIVERY_LIMIT: u64 = 20;

/// Whether a queue of the definitions is an ingest queue, which gets the delivery limit.
fn is_ingest(name: &str) -> bool {
    name.contains(".ingest.")
}

/// The quorum variant of the classic definitions: every durable queue gets
/// `x-queue-type: quorum`, and the ingest queues `x-delivery-limit`, as the nodes declare them
/// with `CHAT_QUEUE_TYPE=quorum` (`backend/src/bus/topology.rs`).
/// Everything else, the `chat` user and its permissions included, stays as it is.
pub fn quorum_definitions(classic: &Value) -> Result<Value> {
    let mut quorum = classic.clone();
    let queues = quorum
        .get_mut("queues")
        .and_then(Value::as_array_mut)
        .context("the definitions have no `queues` list")?;
    for queue in queues {
        let name = queue
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        if queue.get("durable").and_then(Value::as_bool) != Some(true) {
            bail!("queue {name} is not durable: a quorum queue must be");
        }
        let arguments = queue
            .get_mut("arguments")
            .and_then(Value::as_object_mut)
            .with_context(|| format!("queue {name} has no `arguments` object"))?;
        arguments.insert("x-queue-type".into(), "quorum".into());
        if is_ingest(&name) {
            arguments.insert("x-delivery-limit".into(), DELIVERY_LIMIT.into());
        }
    }
    Ok(quorum)
}

/// The quorum definitions as the file holds them: the classic file with a line added to each
/// queue's arguments (two to an ingest queue's), so that the two files differ by exactly those
/// lines. The result is
/// checked against [`quorum_definitions`].
pub fn quorum_definitions_text(root: &Path) -> Result<String> {
    let path = root.join(CLASSIC_DEFINITIONS);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let classic: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let quorum_text = add_queue_type_lines(&text);
    let written: Value = serde_json::from_str(&quorum_text).ok().unwrap_or_default();
    if written != quorum_definitions(&classic)? {
        bail!(
            "{} is not laid out as expected (two spaces per level, one key per line); \
             reformat it",
            path.display()
        );
    }
    Ok(quorum_text)
}

/// Adds `"x-queue-type": "quorum"` to every `arguments` object in the top-level `queues` list
/// of pretty-printed definitions, and the delivery limit to the ingest queues'.
fn add_queue_type_lines(text: &str) -> String {
    const LINE: &str = "\"x-queue-type\": \"quorum\"";
    let limit = format!("\"x-delivery-limit\": {DELIVERY_LIMIT}");
    let mut out: Vec<String> = Vec::new();
    let mut in_queues = false;
    let mut ingest = false;
    // The indentation of an open multi-line `arguments` object.
    let mut arguments: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if indent == "  " && trimmed.starts_with("\"queues\": [") {
            in_queues = true;
        } else if in_queues && indent == "  " && trimmed.starts_with(']') {
            in_queues = false;
        } else if in_queues {
            if let Some(name) = trimmed.strip_prefix("\"name\": \"") {
                ingest = is_ingest(name);
            }
            if let Some(rest) = trimmed.strip_prefix("\"arguments\": {}") {
                out.push(format!("{indent}\"arguments\": {{"));
                if ingest {
                    out.push(format!("{indent}  {limit},"));
                }
                out.push(format!("{indent}  {LINE}"));
                out.push(format!("{indent}}}{rest}"));
                continue;
            }
            if trimmed == "\"arguments\": {" {
                arguments = Some(indent.to_owned());
            } else if arguments.as_deref() == Some(indent) && trimmed.starts_with('}') {
                if let Some(last) = out.last_mut() {
                    last.push(',');
                }
                if ingest {
                    out.push(format!("{indent}  {limit},"));
                }
                out.push(format!("{indent}  {LINE}"));
                arguments = None;
            }
        }
        out.push(line.to_owned());
    }
    let mut joined = out.join("\n");
    joined.push('\n');
    joined
}

/// Rewrites `rabbitmq/definitions.quorum.json` from `rabbitmq/definitions.json`.
pub fn write_quorum_definitions(root: &Path) -> Result<()> {
    let path = root.join(QUORUM_DEFINITIONS);
    std::fs::write(&path, quorum_definitions_text(root)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// One broker's place in the cluster.
pub struct Broker<'a> {
    pub address: Ipv4Addr,
    /// Where the quorum definitions are on this machine.
    pub definitions: &'a Path,
    /// Every broker's node name, this one's included (`rabbit@<ip>`).
    pub cluster: &'a [String],
}

/// `rabbitmq/rabbitmq.conf` for one broker: the definitions from this machine's path, every
/// listener on the broker's address only, and the cluster's members for peer discovery.
pub fn rabbitmq_conf(shipped: &str, broker: &Broker<'_>) -> Result<String> {
    let ip = broker.address;
    let mut conf = replace_line(
        shipped,
        "load_definitions = /etc/rabbitmq/definitions.json",
        &format!("load_definitions = {}", broker.definitions.display()),
    )?;
    conf = replace_line(
        &conf,
        "listeners.tcp.default = 5672",
        &format!("listeners.tcp.default = {ip}:5672"),
    )?;
    conf = replace_line(
        &conf,
        "management.tcp.port = 15672",
        &format!("management.tcp.port = 15672\nmanagement.tcp.ip = {ip}"),
    )?;
    conf = replace_line(
        &conf,
        "prometheus.tcp.port = 15692",
        &format!("prometheus.tcp.port = 15692\nprometheus.tcp.ip = {ip}"),
    )?;
    conf.push_str(&cluster_formation(broker.cluster));
    Ok(conf)
}

/// The peer discovery lines shared by every broker of a cluster (`rabbitmq/cluster.conf` holds
/// the same for the compose file's host names).
pub fn cluster_formation(nodes: &[String]) -> String {
    let mut out = String::from(
        "\n## Cluster (added by `cargo xtask cluster`)\n\n\
         # A broker that boots with an empty database joins the first reachable one of these.\n\
         cluster_formation.peer_discovery_backend = classic_config\n\
         # The name `rabbitmqctl cluster_status` and the management UI show.\n\
         cluster_name = chat\n\
         # A broker cut off from most of the cluster pauses (closing its clients' connections, so\n\
         # the chat nodes move to a broker of the majority) until it reaches the majority again.\n\
         cluster_partition_handling = pause_minority\n",
    );
    for (index, node) in nodes.iter().enumerate() {
        out.push_str(&format!(
            "cluster_formation.classic_config.nodes.{} = {node}\n",
            index + 1
        ));
    }
    out
}

/// `rabbitmq-env.conf` for one broker: read by `rabbitmq-server` and by the CLI tools instead
/// of the machine's `/etc/rabbitmq/rabbitmq-env.conf`, so that neither sees the machine's own
/// broker's settings. Erlang distribution and epmd listen on the broker's address only (epmd on
/// the namespace's loopback too, for the CLI tools run inside it). The brokers notice a lost
/// peer within 10 to 15 s (`net_ticktime` 10 rather than Erlang's 60), so that a partition is
/// acted on (`pause_minority`) within a chaos scenario.
pub fn rabbitmq_env(address: Ipv4Addr, dir: &Path) -> String {
    let octets = address.octets();
    format!(
        "NODENAME=rabbit@{address}\n\
         USE_LONGNAME=true\n\
         MNESIA_BASE={dir}/mnesia\n\
         LOG_BASE={dir}/log\n\
         CONFIG_FILE={dir}/rabbitmq.conf\n\
         ENABLED_PLUGINS_FILE={dir}/enabled_plugins\n\
         PID_FILE={dir}/rabbitmq.pid\n\
         ERL_EPMD_ADDRESS={address},127.0.0.1\n\
         export ERL_FLAGS=\"-kernel inet_dist_use_interface {{{},{},{},{}}} -kernel net_ticktime 10\"\n",
        octets[0],
        octets[1],
        octets[2],
        octets[3],
        dir = dir.display(),
    )
}

/// The name nginx knows the chat nodes by in the cluster's configuration.
const UPSTREAM: &str = "chat_nodes";

/// `docker/nginx.conf` for the cluster: the same locations, headers and timeouts, listening on
/// the balancer's address, with the chat nodes as a fixed upstream (there is no Docker DNS to
/// ask, and the nodes' addresses never change) and its pid file in the run directory.
pub fn nginx_conf(
    shipped: &str,
    listen: Ipv4Addr,
    nodes: &[std::net::SocketAddrV4],
    pid_file: &Path,
) -> Result<String> {
    let mut upstream = format!(
        "    # Generated by `cargo xtask cluster`: the chat nodes have fixed addresses, so a static\n    \
         # upstream (with failure counts kept across requests) replaces Docker's DNS.\n    \
         upstream {UPSTREAM} {{\n"
    );
    for node in nodes {
        upstream.push_str(&format!(
            "        server {node} max_fails=3 fail_timeout=10s;\n"
        ));
    }
    upstream.push_str("    }");
    let mut conf = replace_line(
        shipped,
        "resolver 127.0.0.11 valid=10s ipv6=off;",
        &upstream,
    )?;
    conf = replace_line(&conf, "resolver_timeout 2s;", "")?;
    conf = replace_line(
        &conf,
        "set $chat_node chat:8080;",
        &format!("set $chat_node {UPSTREAM};"),
    )?;
    // The namespace's own loopback too: tools run inside the balancer's namespace (the load
    // generator, which binds its sockets to loopback addresses) reach it there.
    conf = replace_line(
        &conf,
        "listen 80 backlog=65535;",
        &format!("listen {listen}:80 backlog=65535;\n        listen 127.0.0.1:80 backlog=65535;"),
    )?;
    conf = replace_line(
        &conf,
        "worker_processes auto;",
        &format!("worker_processes auto;\npid {};", pid_file.display()),
    )?;
    Ok(conf)
}

/// Replaces the one line whose trimmed text is `line` with `with` (taken as it is, indentation
/// included), or says which line the shipped file no longer has.
fn replace_line(text: &str, line: &str, with: &str) -> Result<String> {
    let matches = text.lines().filter(|l| l.trim() == line).count();
    if matches != 1 {
        bail!(
            "expected the line `{line}` once in a shipped configuration file, found it {matches} \
             times; update xtask/src/cluster/templates.rs to the file's new shape"
        );
    }
    let mut out = String::with_capacity(text.len() + with.len());
    for l in text.lines() {
        if l.trim() == line {
            let indent = &l[..l.len() - l.trim_start().len()];
            if with.starts_with(' ') || with.is_empty() {
                out.push_str(with);
            } else {
                out.push_str(indent);
                out.push_str(with);
            }
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;
    use std::path::PathBuf;

    fn root() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    fn read(path: &str) -> String {
        std::fs::read_to_string(root().join(path)).unwrap_or_default()
    }

    /// `rabbitmq/definitions.quorum.json` is what `cargo xtask cluster definitions` makes of
    /// `rabbitmq/definitions.json` (whose own test keeps it in step with the nodes' topology).
    #[test]
    fn quorum_definitions_are_generated_from_the_classic_ones() {
        let committed: Value = match serde_json::from_str(&read(QUORUM_DEFINITIONS)) {
            Ok(value) => value,
            Err(e) => panic!("{QUORUM_DEFINITIONS} is not JSON: {e}"),
        };
        let generated: Value = match quorum_definitions_text(&root())
            .and_then(|text| serde_json::from_str(&text).map_err(Into::into))
        {
            Ok(value) => value,
            Err(e) => panic!("cannot generate the quorum definitions: {e}"),
        };
        assert_eq!(
            committed, generated,
            "run `cargo xtask cluster definitions` after changing {CLASSIC_DEFINITIONS}"
        );
    }

    #[test]
    fn the_quorum_file_differs_from_the_classic_one_by_the_queue_type_and_limit_lines_only() {
        let classic = read(CLASSIC_DEFINITIONS);
        let quorum = read(QUORUM_DEFINITIONS);
        let added: Vec<&str> = quorum
            .lines()
            .filter(|line| {
                !classic
                    .lines()
                    .any(|c| c.trim_end_matches(',') == line.trim_end_matches(','))
            })
            .collect();
        assert!(!added.is_empty());
        assert!(
            added
                .iter()
                .all(|line| line.trim() == "\"x-queue-type\": \"quorum\""
                    || line.trim() == format!("\"x-delivery-limit\": {DELIVERY_LIMIT},")),
            "{added:?}"
        );
    }

    #[test]
    fn every_queue_of_the_quorum_definitions_is_a_quorum_queue() {
        let quorum: Value = serde_json::from_str(&read(QUORUM_DEFINITIONS)).unwrap_or_default();
        let queues = quorum["queues"].as_array().cloned().unwrap_or_default();
        assert!(!queues.is_empty());
        for queue in queues {
            assert_eq!(queue["arguments"]["x-queue-type"], "quorum", "{queue}");
        }
    }

    #[test]
    fn nginx_conf_keeps_the_shipped_locations_and_names_the_nodes() {
        let nodes = [
            SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 31), 8080),
            SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 32), 8080),
        ];
        let conf = match nginx_conf(
            &read("docker/nginx.conf"),
            Ipv4Addr::new(10, 77, 0, 10),
            &nodes,
            Path::new("/run/x/nginx.pid"),
        ) {
            Ok(conf) => conf,
            Err(e) => panic!("{e}"),
        };
        assert!(conf.contains("server 10.77.0.31:8080 max_fails=3 fail_timeout=10s;"));
        assert!(conf.contains("server 10.77.0.32:8080"));
        assert!(conf.contains("listen 10.77.0.10:80 backlog=65535;"));
        assert!(conf.contains("listen 127.0.0.1:80 backlog=65535;"));
        assert!(conf.contains("set $chat_node chat_nodes;"));
        assert!(conf.contains("pid /run/x/nginx.pid;"));
        assert!(conf.contains("proxy_set_header Upgrade $http_upgrade;"));
        assert!(!conf.contains("resolver"));
    }

    #[test]
    fn rabbitmq_conf_binds_the_broker_address_and_lists_the_cluster() {
        let cluster = vec![
            "rabbit@10.77.0.11".to_owned(),
            "rabbit@10.77.0.12".to_owned(),
        ];
        let conf = match rabbitmq_conf(
            &read("rabbitmq/rabbitmq.conf"),
            &Broker {
                address: Ipv4Addr::new(10, 77, 0, 12),
                definitions: Path::new("/run/x/definitions.quorum.json"),
                cluster: &cluster,
            },
        ) {
            Ok(conf) => conf,
            Err(e) => panic!("{e}"),
        };
        assert!(conf.contains("load_definitions = /run/x/definitions.quorum.json\n"));
        assert!(conf.contains("listeners.tcp.default = 10.77.0.12:5672\n"));
        assert!(conf.contains("management.tcp.ip = 10.77.0.12\n"));
        assert!(conf.contains("cluster_formation.classic_config.nodes.2 = rabbit@10.77.0.12\n"));
    }

    /// The compose file's brokers take the same peer discovery lines, for their host names.
    #[test]
    fn the_shipped_cluster_conf_is_the_generated_one_for_the_compose_host_names() {
        let nodes: Vec<String> = (1..=3).map(|n| format!("rabbit@rabbitmq-{n}")).collect();
        let shipped = read("rabbitmq/cluster.conf");
        let generated = cluster_formation(&nodes);
        let settings = |text: &str| -> Vec<String> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(settings(&shipped), settings(&generated));
    }

    #[test]
    fn a_line_the_shipped_file_lost_is_an_error() {
        assert!(replace_line("a\nb\n", "c", "d").is_err());
        assert!(replace_line("a\na\n", "a", "d").is_err());
        assert_eq!(
            replace_line("x\n  a\n", "a", "d").unwrap_or_default(),
            "x\n  d\n"
        );
    }
}
