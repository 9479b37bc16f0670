//! `cargo xtask backup` and `cargo xtask restore`: the chat database to one file and back, in
//! pg_dump's custom format (compressed; restorable table by table). The test that restores a
//! backup under a running node (`e2e-tests/tests/integration/backup.rs`) runs this same file.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Writes the database at `database_url` to `file`. pg_dump reads one snapshot, so the nodes
/// may go on writing meanwhile: the backup holds every message committed before it started,
/// each room's newest sequence number with them.
pub fn backup(database_url: &str, file: &Path) -> Result<()> {
    let mut dump = Command::new("pg_dump");
    dump.args(["--format=custom", "--no-owner", "--no-privileges", "--file"])
        .arg(file)
        .arg("--dbname")
        .arg(database_url);
    run(&mut dump, "pg_dump")
}

/// Restores `file` into the database at `database_url`, which must be empty (a new database:
/// `CREATE DATABASE chat_restored`). One transaction: on any error the database is left as it
/// was. Nodes started on it find the migrations applied and go on with each room's sequence.
pub fn restore(database_url: &str, file: &Path) -> Result<()> {
    if !file.is_file() {
        bail!("no backup at {}", file.display());
    }
    let mut load = Command::new("pg_restore");
    load.args([
        "--no-owner",
        "--no-privileges",
        "--single-transaction",
        "--exit-on-error",
        "--dbname",
    ])
    .arg(database_url)
    .arg(file);
    run(&mut load, "pg_restore")
}

fn run(command: &mut Command, tool: &str) -> Result<()> {
    let output = command.output().with_context(|| {
        format!("cannot run {tool}: install PostgreSQL's client tools (apt-get install -y postgresql-client)")
    })?;
    if !output.status.success() {
        bail!(
            "{tool} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
