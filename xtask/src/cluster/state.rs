//! What `up` made, recorded in `target/cluster/state.json` for `status`, `check` and `down`.

use super::hosts::{Cluster, Started};
use super::net;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// What `up` made, for `status` and `down`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The `up` that made it, which `down` stops first if it still runs.
    pub up_pid: u32,
    pub run_dir: PathBuf,
    pub erlang_cookie: String,
    pub postgres_password: String,
    pub postgres_bin: PathBuf,
    /// Filled in once everything is ready.
    pub url: String,
    pub processes: Vec<Process>,
    /// Seconds `up` took, from the first namespace to the balancer's first ready answer.
    pub up_seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Process {
    pub host: String,
    pub what: String,
    pub pid: u32,
    pub log: PathBuf,
}

impl State {
    pub fn load(path: &Path) -> Result<State> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "no cluster is up ({} is missing): run `cargo xtask cluster up`",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is not readable", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // It holds the cluster's Erlang cookie and PostgreSQL password: for root's eyes only.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(serde_json::to_string_pretty(self)?.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn cluster(&self, root: &Path) -> Cluster {
        Cluster {
            root: root.to_owned(),
            hosts: net::plan(),
            run_dir: self.run_dir.clone(),
            erlang_cookie: self.erlang_cookie.clone(),
            postgres_password: self.postgres_password.clone(),
            postgres_bin: self.postgres_bin.clone(),
        }
    }

    pub fn record(&mut self, started: &Started) {
        self.processes.push(Process {
            host: started.host.clone(),
            what: started.what.to_owned(),
            pid: started.pid,
            log: started.log.clone(),
        });
    }
}

pub fn state_path(root: &Path) -> Result<PathBuf> {
    Ok(crate::web::target_dir(root)?.join("cluster/state.json"))
}

/// A fresh directory name under the system's temporary directory (created by `start`).
pub fn new_run_dir() -> Result<PathBuf> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    Ok(std::env::temp_dir().join(format!(
        "chat-cluster-{}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff
    )))
}

pub fn random_hex(bytes: usize) -> Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut buffer))
        .context("cannot read /dev/urandom")?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}
