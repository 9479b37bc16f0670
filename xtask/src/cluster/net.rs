//! The cluster's hosts: one Linux network namespace each, with one address on a private subnet,
//! joined by a bridge in the machine's own namespace. The bridge has the subnet's first
//! address, which is how this machine reaches the hosts; no host has a route anywhere else.

use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The private subnet, a /24: the bridge is `.1`, the hosts have fixed addresses in it.
pub const SUBNET: [u8; 3] = [10, 77, 0];
/// Every namespace, veth and the bridge are named with this prefix.
pub const PREFIX: &str = "chatc-";
pub const BRIDGE: &str = "chatc-br0";
/// What processes started in the namespaces find on their PATH (their environment is cleared).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Balancer,
    /// RabbitMQ broker number 1, 2 or 3.
    Broker(u8),
    Database,
    Cache,
    /// Chat node number 1, 2 or 3.
    Node(u8),
}

/// One host of the cluster.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub role: Role,
    pub address: Ipv4Addr,
}

impl Host {
    fn new(name: &str, role: Role, last_octet: u8) -> Host {
        Host {
            name: name.to_owned(),
            role,
            address: subnet_address(last_octet),
        }
    }

    /// The network namespace, and the name of the veth end that stays on the bridge.
    pub fn netns(&self) -> String {
        format!("{PREFIX}{}", self.name)
    }

    pub fn socket(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.address, port)
    }
}

pub fn subnet_address(last_octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], last_octet)
}

/// The address this machine has on the bridge.
pub fn bridge_address() -> Ipv4Addr {
    subnet_address(1)
}

/// Every host, in the order they are set up: brokers first (they take longest), the balancer
/// last.
pub fn plan() -> Vec<Host> {
    vec![
        Host::new("rabbit1", Role::Broker(1), 11),
        Host::new("rabbit2", Role::Broker(2), 12),
        Host::new("rabbit3", Role::Broker(3), 13),
        Host::new("postgres", Role::Database, 20),
        Host::new("memcached", Role::Cache, 21),
        Host::new("node1", Role::Node(1), 31),
        Host::new("node2", Role::Node(2), 32),
        Host::new("node3", Role::Node(3), 33),
        Host::new("lb", Role::Balancer, 10),
    ]
}

/// Everything `up` needs from this machine, all missing pieces named at once.
pub fn preflight(postgres_bin: Option<&Path>) -> Result<()> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push(
            "root: network namespaces, veth pairs and the bridge need CAP_NET_ADMIN and \
             CAP_SYS_ADMIN (run `sudo -E cargo xtask cluster up`)"
                .to_owned(),
        );
    }
    let tools: [(&str, &str); 6] = [
        ("ip", "apt-get install -y iproute2"),
        ("setpriv", "apt-get install -y util-linux"),
        ("epmd", "apt-get install -y erlang-base"),
        ("memcached", "apt-get install -y memcached"),
        (
            "nginx",
            "apt-get install -y nginx (the service need not run)",
        ),
        ("rabbitmq-server", "apt-get install -y rabbitmq-server"),
    ];
    for (tool, install) in tools {
        if which(tool).is_none() {
            missing.push(format!("`{tool}`: {install}"));
        }
    }
    if !Path::new(RABBITMQ_BIN).join("rabbitmq-server").exists() {
        missing.push(format!(
            "{RABBITMQ_BIN}/rabbitmq-server (Debian's rabbitmq-server package)"
        ));
    }
    if postgres_bin.is_none() {
        missing.push(
            "PostgreSQL server binaries under /usr/lib/postgresql/<version>/bin: \
             apt-get install -y postgresql"
                .to_owned(),
        );
    }
    for user in ["rabbitmq", "postgres", "memcache"] {
        if !user_exists(user) {
            missing.push(format!("the system user `{user}` (created by its package)"));
        }
    }
    if missing.is_empty() && !quiet(Command::new("ip").args(["netns", "list"])) {
        missing.push(
            "`ip netns` support (a kernel with network namespaces, and /run/netns writable)"
                .to_owned(),
        );
    }
    if !missing.is_empty() {
        bail!(
            "cannot build the cluster on this machine; missing:\n  - {}",
            missing.join("\n  - ")
        );
    }
    Ok(())
}

/// Whether this process runs with the effective user id 0 (from `/proc`, the `Uid:` line's
/// second field).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|id| id == "0"))
        })
        .unwrap_or(false)
}

/// Where Debian's package keeps the RabbitMQ scripts that run without the root wrapper.
pub const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// The newest installed PostgreSQL server's binaries.
pub fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn which(tool: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.exists())
}

fn user_exists(user: &str) -> bool {
    quiet(Command::new("id").args(["-u", user]))
}

/// Fails when the subnet overlaps a route or an address this machine already has.
pub fn check_subnet_free() -> Result<()> {
    let routes = output(Command::new("ip").args(["-4", "-o", "route", "show", "table", "all"]))?;
    let addresses = output(Command::new("ip").args(["-4", "-o", "addr", "show"]))?;
    let ours = (u32::from(subnet_address(0)), 24);
    let taken = routes
        .lines()
        .filter_map(route_destination)
        .chain(
            addresses
                .lines()
                .filter_map(|line| line.split_whitespace().nth(3)),
        )
        .filter_map(parse_cidr)
        .find(|&theirs| overlaps(ours, theirs));
    if let Some((network, bits)) = taken {
        bail!(
            "the cluster's subnet {}/24 overlaps {}/{bits} on this machine; change SUBNET in \
             xtask/src/cluster/net.rs",
            subnet_address(0),
            Ipv4Addr::from(network)
        );
    }
    Ok(())
}

/// The destination of a line of `ip -o route show table all`, which starts with the route's
/// type when it is not `unicast` (`local 127.0.0.1 dev lo …`).
fn route_destination(line: &str) -> Option<&str> {
    const TYPES: [&str; 10] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
    ];
    let mut words = line.split_whitespace();
    let first = words.next()?;
    if TYPES.contains(&first) {
        words.next()
    } else {
        Some(first)
    }
}

fn parse_cidr(text: &str) -> Option<(u32, u8)> {
    let (address, bits) = match text.split_once('/') {
        Some((address, bits)) => (address, bits.parse::<u8>().ok()?),
        None => (text, 32),
    };
    let address: Ipv4Addr = address.parse().ok()?;
    (bits <= 32).then_some((u32::from(address), bits))
}

fn overlaps((a, a_bits): (u32, u8), (b, b_bits): (u32, u8)) -> bool {
    let bits = a_bits.min(b_bits);
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    a & mask == b & mask
}

/// Creates the bridge with this machine's address on it.
pub fn create_bridge() -> Result<()> {
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&[
        "addr",
        "add",
        &format!("{}/24", bridge_address()),
        "dev",
        BRIDGE,
    ])?;
    ip(&["link", "set", BRIDGE, "up"])
}

/// Creates a host: its namespace, a veth pair with one end (`eth0`) inside holding the host's
/// address and the other on the bridge, and the namespace's loopback.
pub fn create_host(host: &Host) -> Result<()> {
    let netns = host.netns();
    ip(&["netns", "add", &netns])?;
    ip(&[
        "link", "add", &netns, "type", "veth", "peer", "name", "eth0", "netns", &netns,
    ])?;
    ip(&["link", "set", &netns, "master", BRIDGE, "up"])?;
    ip(&[
        "-n",
        &netns,
        "addr",
        "add",
        &format!("{}/24", host.address),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &netns, "link", "set", "lo", "up"])
}

/// The cluster's namespaces that exist now, whoever made them (a half-finished `up` too).
pub fn existing_namespaces() -> Result<Vec<String>> {
    let list = output(Command::new("ip").args(["netns", "list"]))?;
    Ok(list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

/// Links in this machine's namespace that carry the prefix: the bridge, and veth ends whose
/// namespace is gone without them.
pub fn existing_links() -> Result<Vec<String>> {
    let list = output(Command::new("ip").args(["-o", "link", "show"]))?;
    Ok(list
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name))
        .filter(|name| name.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

/// The processes running in a namespace.
pub fn pids(netns: &str) -> Vec<i32> {
    output(Command::new("ip").args(["netns", "pids", netns]))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

pub fn delete_namespace(netns: &str) -> Result<()> {
    ip(&["netns", "del", netns])
}

/// Deletes a link; one that is already gone is fine.
pub fn delete_link(name: &str) -> Result<()> {
    match ip(&["link", "del", name]) {
        Err(_) if !existing_links()?.iter().any(|link| link == name) => Ok(()),
        other => other,
    }
}

/// A command run inside a host's namespace, as `user` when given, with only the environment
/// it is given (plus PATH): nothing of the caller's shell leaks into the cluster's processes.
pub fn command_in(host: &Host, user: Option<&str>, program: &str) -> Command {
    let mut command = Command::new("ip");
    command
        .env_clear()
        .env("PATH", PATH)
        .env("LANG", "C.UTF-8")
        .args(["netns", "exec", &host.netns()]);
    if let Some(user) = user {
        command.args([
            "setpriv",
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
        ]);
    }
    command.arg(program);
    command
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Standard output of a command that must succeed.
pub fn output(command: &mut Command) -> Result<String> {
    let out: Output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a command succeeds, its output discarded.
pub fn quiet(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Cuts `host` off from `peers`, both ways: a blackhole route to each peer in `host`'s
/// namespace and one to `host` in each peer's, as a link down between them would (every packet
/// either way is discarded before it leaves, and the sender's socket sees the error). Their
/// other traffic passes. (This machine's kernel has no `tc` drop action and no netfilter.)
pub fn cut(host: &Host, peers: &[&Host]) -> Result<()> {
    for peer in peers {
        blackhole(host, peer, "add")?;
        blackhole(peer, host, "add")?;
    }
    Ok(())
}

/// Undoes [`cut`].
pub fn uncut(host: &Host, peers: &[&Host]) -> Result<()> {
    let mut outcome = Ok(());
    for peer in peers {
        for (from, to) in [(host, *peer), (*peer, host)] {
            if let Err(error) = blackhole(from, to, "del") {
                outcome = Err(error);
            }
        }
    }
    outcome
}

fn blackhole(from: &Host, to: &Host, verb: &str) -> Result<()> {
    ip(&[
        "-n",
        &from.netns(),
        "route",
        verb,
        "blackhole",
        &format!("{}/32", to.address),
    ])
}

/// The first of the addresses the chaos checker's clients connect from.
const FIRST_CLIENT_OCTET: u8 = 100;
/// At most this many client addresses.
pub const MAX_CLIENT_ADDRESSES: usize = 150;

/// More addresses of this machine's on the bridge (client address `first` on, `.100` being
/// the first of all), for clients that must look like several machines to per-address limits.
/// Two workloads that must not share a budget take ranges that do not overlap. They go with
/// the bridge.
pub fn add_client_addresses(first: usize, count: usize) -> Result<Vec<Ipv4Addr>> {
    if first + count > MAX_CLIENT_ADDRESSES {
        bail!(
            "at most {MAX_CLIENT_ADDRESSES} client addresses, not {}",
            first + count
        );
    }
    let present = output(Command::new("ip").args(["-o", "-4", "addr", "show", "dev", BRIDGE]))?;
    let mut addresses = Vec::new();
    for index in first..first + count {
        let address = subnet_address(FIRST_CLIENT_OCTET + u8::try_from(index)?);
        if !present.contains(&format!("inet {address}/")) {
            ip(&["addr", "add", &format!("{address}/32"), "dev", BRIDGE])?;
        }
        addresses.push(address);
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_overlap_when_one_contains_the_other() {
        let ours = (u32::from(Ipv4Addr::new(10, 77, 0, 0)), 24);
        assert!(overlaps(ours, (u32::from(Ipv4Addr::new(10, 0, 0, 0)), 8)));
        assert!(overlaps(ours, (u32::from(Ipv4Addr::new(10, 77, 0, 9)), 32)));
        assert!(!overlaps(
            ours,
            (u32::from(Ipv4Addr::new(10, 77, 1, 0)), 24)
        ));
        assert!(overlaps(ours, (0, 0)), "a default route covers everything");
        assert_eq!(parse_cidr("default"), None);
        assert_eq!(
            route_destination("local 127.0.0.1 dev lo table local"),
            Some("127.0.0.1")
        );
        assert_eq!(
            parse_cidr("192.0.2.0/24"),
            Some((u32::from(Ipv4Addr::new(192, 0, 2, 0)), 24))
        );
    }

    #[test]
    fn names_fit_in_an_interface_name() {
        for host in plan() {
            assert!(host.netns().len() <= 15, "{}", host.netns());
        }
        assert!(BRIDGE.len() <= 15);
    }
}
