//! What each host runs: its files written, its process started in its namespace, and the
//! check that says it is ready. The brokers, which take more, are in `brokers`.
//!
//! Every process runs in the foreground of its own process group, with its output in a log
//! file of the run directory, so `up` can return and leave it running; `down` ends them by
//! ending every process in the cluster's namespaces.

use super::net::{self, Host, Role};
use super::templates;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port every chat node listens on, on its own address.
pub const NODE_PORT: u16 = 8080;
/// The port of every node's operator listener (`/metrics`).
pub const METRICS_PORT: u16 = 9091;
pub const AMQP_PORT: u16 = 5672;
pub const POSTGRES_PORT: u16 = 5432;
pub const MEMCACHED_PORT: u16 = 11211;
pub const BALANCER_PORT: u16 = 80;
/// The ingest shards of the shipped definitions.
pub const INGEST_SHARDS: u16 = 2;
/// The nodes' RabbitMQ user, from the definitions.
pub const AMQP_USER: &str = "chat:chat";

/// Everything the hosts share: their addresses, the run directory, the secrets.
pub struct Cluster {
    pub root: PathBuf,
    pub hosts: Vec<Host>,
    pub run_dir: PathBuf,
    pub erlang_cookie: String,
    pub postgres_password: String,
    pub postgres_bin: PathBuf,
}

/// A process started on a host.
pub struct Started {
    pub host: String,
    pub what: &'static str,
    pub pid: u32,
    pub log: PathBuf,
    pub child: Child,
}

impl Cluster {
    /// The hosts and their addresses alone, as every `up` lays them out.
    pub fn planned(root: &Path) -> Cluster {
        Cluster {
            root: root.to_owned(),
            hosts: net::plan(),
            run_dir: PathBuf::new(),
            erlang_cookie: String::new(),
            postgres_password: String::new(),
            postgres_bin: PathBuf::new(),
        }
    }

    pub fn hosts_with(&self, pick: impl Fn(Role) -> bool) -> Vec<&Host> {
        self.hosts.iter().filter(|host| pick(host.role)).collect()
    }

    pub fn host(&self, role: Role) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|host| host.role == role)
            .with_context(|| format!("the plan has no {role:?}"))
    }

    pub fn brokers(&self) -> Vec<&Host> {
        self.hosts_with(|role| matches!(role, Role::Broker(_)))
    }

    pub fn nodes(&self) -> Vec<&Host> {
        self.hosts_with(|role| matches!(role, Role::Node(_)))
    }

    pub fn broker_name(host: &Host) -> String {
        format!("rabbit@{}", host.address)
    }

    pub(super) fn dir(&self, host: &Host) -> PathBuf {
        self.run_dir.join(&host.name)
    }

    pub(super) fn definitions(&self) -> PathBuf {
        self.run_dir.join("definitions.quorum.json")
    }

    pub fn database_url(&self) -> Result<String> {
        let db = self.host(Role::Database)?;
        Ok(format!(
            "postgres://postgres:{}@{}/chat",
            self.postgres_password,
            db.socket(POSTGRES_PORT)
        ))
    }

    pub fn balancer_url(&self) -> Result<String> {
        let lb = self.host(Role::Balancer)?;
        Ok(format!("http://{}/", lb.address))
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A cluster of its own (`initdb`), with the password login from the subnet.
pub fn configure_postgres(cluster: &Cluster, host: &Host) -> Result<()> {
    let dir = cluster.dir(host);
    std::fs::create_dir_all(&dir)?;
    let password_file = dir.join("password");
    std::fs::write(&password_file, &cluster.postgres_password)?;
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))?;
    chown(&dir, "postgres")?;
    let mut initdb = net::command_in(
        host,
        Some("postgres"),
        &cluster.postgres_bin.join("initdb").to_string_lossy(),
    );
    initdb
        .arg("--pgdata")
        .arg(dir.join("data"))
        .args([
            "--username=postgres",
            "--encoding=UTF8",
            "--no-locale",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", password_file.display()));
    net::output(&mut initdb).context("initdb failed")?;
    std::fs::remove_file(&password_file)?;
    let mut hba = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("data/pg_hba.conf"))?;
    writeln!(
        hba,
        "# The cluster's subnet (cargo xtask cluster).\nhost all all {}/24 scram-sha-256",
        net::subnet_address(0)
    )?;
    Ok(())
}

pub fn start_postgres(cluster: &Cluster, host: &Host) -> Result<Started> {
    let dir = cluster.dir(host);
    let mut postgres = net::command_in(
        host,
        Some("postgres"),
        &cluster.postgres_bin.join("postgres").to_string_lossy(),
    );
    postgres
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-c", &format!("listen_addresses={}", host.address)])
        .args(["-c", &format!("port={POSTGRES_PORT}")])
        .args(["-c", &format!("unix_socket_directories={}", dir.display())])
        // As the compose file: three nodes hold up to 16 connections each.
        .args(["-c", "max_connections=200"]);
    spawn(host, "postgres", &mut postgres, &dir.join("postgres.log"))
}

/// A PostgreSQL program run as `postgres` on the database's host.
fn postgres_tool(cluster: &Cluster, host: &Host, name: &str) -> Command {
    net::command_in(
        host,
        Some("postgres"),
        &cluster.postgres_bin.join(name).to_string_lossy(),
    )
}

/// Waits until PostgreSQL accepts connections, then creates the `chat` database.
pub fn wait_postgres(cluster: &Cluster, host: &Host, started: &mut Started) -> Result<()> {
    wait_postgres_ready(cluster, host, started)?;
    net::output(
        postgres_tool(cluster, host, "createdb")
            .arg("-h")
            .arg(cluster.dir(host))
            .arg("chat"),
    )
    .context("cannot create the chat database")?;
    Ok(())
}

/// Waits until PostgreSQL accepts connections.
pub fn wait_postgres_ready(cluster: &Cluster, host: &Host, started: &mut Started) -> Result<()> {
    let dir = cluster.dir(host);
    wait_until(started, Duration::from_secs(60), || {
        net::quiet(
            postgres_tool(cluster, host, "pg_isready")
                .arg("-h")
                .arg(&dir),
        )
    })
}

/// Shuts PostgreSQL down the way an operator would (`pg_ctl stop -m fast`: sessions are ended,
/// nothing committed is lost) and waits until it has.
pub fn stop_postgres(cluster: &Cluster, host: &Host) -> Result<()> {
    net::output(
        postgres_tool(cluster, host, "pg_ctl")
            .args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(cluster.dir(host).join("data")),
    )
    .context("pg_ctl stop failed")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Memcached

pub fn start_memcached(cluster: &Cluster, host: &Host) -> Result<Started> {
    let dir = cluster.dir(host);
    std::fs::create_dir_all(&dir)?;
    let mut memcached = net::command_in(host, None, "memcached");
    memcached.args([
        "-u",
        "memcache",
        "-l",
        &host.address.to_string(),
        "-p",
        &MEMCACHED_PORT.to_string(),
        "-m",
        "64",
    ]);
    spawn(
        host,
        "memcached",
        &mut memcached,
        &dir.join("memcached.log"),
    )
}

pub fn wait_listening(started: &mut Started, address: SocketAddrV4) -> Result<()> {
    wait_until(started, Duration::from_secs(30), || {
        TcpStream::connect_timeout(&address.into(), Duration::from_millis(500)).is_ok()
    })
}

// ---------------------------------------------------------------------------------------------
// Chat nodes

pub fn start_node(
    cluster: &Cluster,
    host: &Host,
    index: u8,
    binary: &Path,
    web_dir: &Path,
) -> Result<Started> {
    let dir = cluster.dir(host);
    std::fs::create_dir_all(&dir)?;
    let brokers = cluster.brokers();
    // Node N talks to broker N first: the connections spread over the brokers, and each node's
    // queue lives on its own broker. The others follow, for when that one is lost.
    let first = usize::from(index.saturating_sub(1));
    let amqp_urls: Vec<String> = (0..brokers.len())
        .map(|k| brokers[(first + k) % brokers.len()])
        .map(|broker| format!("amqp://{AMQP_USER}@{}/%2f", broker.socket(AMQP_PORT)))
        .collect();
    if amqp_urls.is_empty() {
        bail!("no brokers");
    }
    let lb = cluster.host(Role::Balancer)?;
    let memcached = cluster.host(Role::Cache)?;
    let mut node = net::command_in(host, None, &binary.to_string_lossy());
    node.env("CHAT_NODE_ID", format!("node-{index}"))
        .env("CHAT_LISTEN", host.socket(NODE_PORT).to_string())
        .env("CHAT_METRICS_LISTEN", host.socket(METRICS_PORT).to_string())
        .env("DATABASE_URL", cluster.database_url()?)
        .env("AMQP_URL", amqp_urls.join(","))
        .env("CHAT_QUEUE_TYPE", "quorum")
        .env("CHAT_AMQP_PREFIX", "chat")
        .env("CHAT_INGEST_SHARDS", INGEST_SHARDS.to_string())
        .env(
            "MEMCACHED_SERVERS",
            memcached.socket(MEMCACHED_PORT).to_string(),
        )
        .env("CHAT_TRUSTED_PROXIES", lb.address.to_string())
        .env("CHAT_WEB_DIR", web_dir)
        .env("RUST_LOG", "info");
    spawn(host, "chat-server", &mut node, &dir.join("chat-server.log"))
}

pub fn wait_node(started: &mut Started, host: &Host) -> Result<()> {
    let address = host.socket(NODE_PORT);
    wait_until(started, Duration::from_secs(90), || {
        http_status(address, "/readyz") == Some(200)
    })
}

// ---------------------------------------------------------------------------------------------
// Load balancer

pub fn configure_balancer(cluster: &Cluster, host: &Host) -> Result<PathBuf> {
    let dir = cluster.dir(host);
    std::fs::create_dir_all(dir.join("logs"))?;
    let nodes: Vec<SocketAddrV4> = cluster
        .nodes()
        .into_iter()
        .map(|node| node.socket(NODE_PORT))
        .collect();
    let shipped = read(&cluster.root.join("docker/nginx.conf"))?;
    let conf = templates::nginx_conf(&shipped, host.address, &nodes, &dir.join("nginx.pid"))?;
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut test = nginx(host, &path, &dir);
    test.arg("-t");
    net::output(&mut test).context("nginx rejects the generated configuration")?;
    Ok(path)
}

fn nginx(host: &Host, conf: &Path, dir: &Path) -> Command {
    let mut command = net::command_in(host, None, "nginx");
    command
        .arg("-c")
        .arg(conf)
        .arg("-p")
        .arg(format!("{}/", dir.display()))
        .args(["-e", "stderr"]);
    command
}

pub fn start_balancer(cluster: &Cluster, host: &Host, conf: &Path) -> Result<Started> {
    let dir = cluster.dir(host);
    let mut command = nginx(host, conf, &dir);
    command.args(["-g", "daemon off;"]);
    spawn(host, "nginx", &mut command, &dir.join("nginx.log"))
}

pub fn wait_balancer(started: &mut Started, host: &Host) -> Result<()> {
    let address = host.socket(BALANCER_PORT);
    wait_until(started, Duration::from_secs(30), || {
        http_status(address, "/readyz") == Some(200)
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Starts a long-running process in its own process group (so Ctrl-C on `up` leaves it be),
/// its output appended to `log`.
pub(super) fn spawn(
    host: &Host,
    what: &'static str,
    command: &mut Command,
    log: &Path,
) -> Result<Started> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {what} on {}", host.name))?;
    Ok(Started {
        host: host.name.clone(),
        what,
        pid: child.id(),
        log: log.to_owned(),
        child,
    })
}

/// Polls `ready` until it holds; fails early, with the end of its log, if the process exits.
pub(super) fn wait_until(
    started: &mut Started,
    within: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if ready() {
            return Ok(());
        }
        if super::interrupted() {
            bail!("interrupted");
        }
        if let Some(status) = started.child.try_wait()? {
            bail!(
                "{} on {} exited ({status}); the end of {}:\n{}",
                started.what,
                started.host,
                started.log.display(),
                log_tail(&started.log, 20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} on {} not ready within {within:?}; the end of {}:\n{}",
                started.what,
                started.host,
                started.log.display(),
                log_tail(&started.log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The status code of a plain HTTP/1.1 GET.
pub fn http_status(address: SocketAddrV4, path: &str) -> Option<u16> {
    let mut stream =
        TcpStream::connect_timeout(&address.into(), Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 32];
    let read = stream.read(&mut head).ok()?;
    let text = String::from_utf8_lossy(&head[..read]);
    text.split_whitespace().nth(1)?.parse().ok()
}

pub(super) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub(super) fn chown(dir: &Path, user: &str) -> Result<()> {
    net::output(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:{user}"))
            .arg(dir),
    )?;
    Ok(())
}
