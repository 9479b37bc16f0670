//! A PostgreSQL primary with a synchronous streaming standby, both private to one test: two
//! clusters of their own (`initdb`, then `pg_basebackup` of the primary) on free loopback
//! ports under a temporary directory, stopped and removed when dropped. The test may kill the
//! primary and promote the standby, as an operator (or a tool like Patroni) would.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The standby's name in the primary's `synchronous_standby_names`.
const STANDBY_NAME: &str = "standby";
/// How long starting, replicating or promoting may take.
const STARTUP: Duration = Duration::from_secs(60);

pub struct PostgresPair {
    dir: PathBuf,
    bin: PathBuf,
    pub primary_port: u16,
    pub standby_port: u16,
}

impl PostgresPair {
    /// Starts the primary, creates `database` on it, starts the standby from a base backup and
    /// waits until the primary reports it as its synchronous standby.
    pub async fn start(database: &str) -> anyhow::Result<PostgresPair> {
        let database = database.to_owned();
        tokio::task::spawn_blocking(move || PostgresPair::start_blocking(&database)).await?
    }

    fn start_blocking(database: &str) -> anyhow::Result<PostgresPair> {
        let bin = postgres_bin()?;
        let dir = std::env::temp_dir().join(format!(
            "chat-pg-pair-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir)?;
        let pair = PostgresPair {
            primary_port: free_port()?,
            standby_port: free_port()?,
            dir,
            bin,
        };
        chown_to_postgres(&pair.dir)?;
        let primary = pair.dir.join("primary");
        pair.tool("initdb")
            .arg("--pgdata")
            .arg(&primary)
            .args([
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ])
            .run()?;
        append(
            &primary.join("postgresql.conf"),
            &format!(
                "listen_addresses = '127.0.0.1'\n\
                 port = {}\n\
                 unix_socket_directories = '{}'\n\
                 wal_level = replica\n\
                 max_wal_senders = 4\n\
                 synchronous_commit = on\n\
                 max_connections = 100\n\
                 shared_buffers = 32MB\n\
                 fsync = off\n",
                pair.primary_port,
                pair.dir.display()
            ),
        )?;
        pair.start_server(&primary, pair.primary_port)?;
        pair.tool("createdb")
            .args(["-h", "127.0.0.1", "-p", &pair.primary_port.to_string()])
            .args(["-U", "postgres", database])
            .run()?;

        let standby = pair.dir.join("standby");
        pair.tool("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &pair.primary_port.to_string()])
            .args(["-U", "postgres", "--wal-method=stream", "--checkpoint=fast"])
            .arg("--pgdata")
            .arg(&standby)
            .run()?;
        std::fs::write(standby.join("standby.signal"), "")?;
        append(
            &standby.join("postgresql.auto.conf"),
            &format!(
                "port = {}\n\
                 synchronous_standby_names = ''\n\
                 primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={STANDBY_NAME}'\n",
                pair.standby_port, pair.primary_port
            ),
        )?;
        chown_to_postgres(&standby)?;
        pair.start_server(&standby, pair.standby_port)?;

        // Synchronous from now on: before the standby existed, the primary's commits (its
        // `CREATE DATABASE` among them) would have waited for it.
        pair.query(
            pair.primary_port,
            &format!("ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'"),
        )?;
        pair.query(pair.primary_port, "SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + STARTUP;
        loop {
            let state = pair.query(
                pair.primary_port,
                "SELECT sync_state FROM pg_stat_replication",
            )?;
            if state == "sync" {
                break;
            }
            if Instant::now() > deadline {
                bail!("the standby did not become synchronous (sync_state {state:?})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(pair)
    }

    /// A libpq multi-host URL of `database`: the primary first, the standby second, and only a
    /// server that accepts writes will do.
    pub fn database_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}?target_session_attrs=read-write",
            self.primary_port, self.standby_port
        )
    }

    /// The URL of `database` on the standby alone.
    pub fn standby_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.standby_port
        )
    }

    /// SIGKILLs the primary's postmaster (its backends follow it).
    pub fn kill_primary(&self) -> anyhow::Result<()> {
        let pid = postmaster_pid(&self.dir.join("primary"))?;
        Command::new("kill").args(["-KILL", &pid.to_string()]).run()
    }

    /// Promotes the standby and waits until it accepts writes.
    pub async fn promote_standby(&self) -> anyhow::Result<()> {
        let mut promote = self.tool("pg_ctl");
        promote
            .args(["promote", "--wait", "--pgdata"])
            .arg(self.dir.join("standby"));
        tokio::task::spawn_blocking(move || promote.run()).await?
    }

    fn start_server(&self, data: &Path, port: u16) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{port}.log"));
        self.tool("pg_ctl")
            .args(["start", "--wait", "--pgdata"])
            .arg(data)
            .arg("--log")
            .arg(&log)
            .args(["-o", &format!("-p {port}")])
            .run()
            .with_context(|| {
                format!(
                    "PostgreSQL on port {port} did not start; see {}",
                    log.display()
                )
            })
    }

    /// One value of a query, run by psql against `port`'s `postgres` database.
    fn query(&self, port: u16, sql: &str) -> anyhow::Result<String> {
        let output = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-d", "postgres", "-Atc", sql])
            .stdin(Stdio::null())
            .output()
            .context("cannot run psql")?;
        if !output.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// A PostgreSQL program, run as the `postgres` user when this process is root.
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for PostgresPair {
    fn drop(&mut self) {
        for cluster in ["primary", "standby"] {
            let data = self.dir.join(cluster);
            if let Ok(pid) = postmaster_pid(&data) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

trait Run {
    fn run(&mut self) -> anyhow::Result<()>;
}

impl Run for Command {
    fn run(&mut self) -> anyhow::Result<()> {
        let output = self
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {:?}", self.get_program()))?;
        if !output.status.success() {
            bail!(
                "{:?} failed: {}{}",
                self.get_args().collect::<Vec<_>>(),
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Hands `path` (and what is in it) to the `postgres` user when this process is root; otherwise
/// the clusters run as this user, who owns it already.
fn chown_to_postgres(path: &Path) -> anyhow::Result<()> {
    if is_root() {
        Command::new("chown")
            .arg("-R")
            .arg("postgres:")
            .arg(path)
            .run()
    } else {
        Ok(())
    }
}

fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The postmaster's pid: the first line of `postmaster.pid`.
fn postmaster_pid(data: &Path) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(data.join("postmaster.pid"))?;
    text.lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .context("postmaster.pid holds no pid")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The newest installed PostgreSQL's programs (`/usr/lib/postgresql/<version>/bin`).
fn postgres_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no PostgreSQL under /usr/lib/postgresql")?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin")
}
