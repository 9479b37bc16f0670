//! `cargo xtask audit`: the dependencies in `Cargo.lock` against a snapshot of the RustSec
//! advisory database, offline, with cargo-deny and the ignore list in `deny.toml`.
//!
//! The snapshot (`../shared/advisory-db` by default) is plain files, and cargo-deny reads a
//! database from `<db-path>/<last url segment>-<xxh64 of the url>/`, taking the time of its last
//! fetch from `.git/FETCH_HEAD`. So the snapshot is copied under a temporary db-path, with a
//! `FETCH_HEAD` dated as the snapshot: `maximum-db-staleness` in `deny.toml` then measures the
//! snapshot's real age.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The database `deny.toml` names in `db-urls`; only its directory name is used offline.
const DB_URL: &str = "https://github.com/RustSec/advisory-db";

pub fn audit(root: &Path, db: Option<PathBuf>) -> Result<()> {
    let db = db.unwrap_or_else(|| root.join("../shared/advisory-db"));
    let version = crate::cargo().args(["deny", "--version"]).output();
    match version {
        Ok(output) if output.status.success() => {
            print!("{}", String::from_utf8_lossy(&output.stdout));
        }
        _ => bail!(
            "cargo-deny is not installed (`cargo deny --version` failed): install it with \
             `cargo install cargo-deny --locked` (about 5 minutes on 2 cores)"
        ),
    }
    if !db.join("crates").is_dir() {
        bail!(
            "no advisory database at {}: expected a copy of the RustSec advisory-db with its \
             `crates/` directory (pass --db PATH or set CHAT_ADVISORY_DB)",
            db.display()
        );
    }
    let snapshot = std::fs::read_to_string(db.join("SNAPSHOT")).ok();
    let snapshot_date = snapshot
        .as_deref()
        .and_then(|line| line.split_whitespace().nth(1))
        .map(str::to_owned);
    println!(
        "advisory database: {} ({})",
        db.display(),
        snapshot.as_deref().map_or("no SNAPSHOT file", str::trim)
    );

    let dbs = TempDir::new()?;
    let copy = dbs.path.join(db_dir_name(DB_URL));
    crate::run(Command::new("cp").arg("-R").arg(&db).arg(&copy))?;
    let git = copy.join(".git");
    std::fs::create_dir_all(&git).with_context(|| format!("cannot create {}", git.display()))?;
    let fetch_head = git.join("FETCH_HEAD");
    std::fs::write(&fetch_head, "")
        .with_context(|| format!("cannot write {}", fetch_head.display()))?;
    if let Some(date) = snapshot_date {
        crate::run(Command::new("touch").arg("-d").arg(&date).arg(&fetch_head))?;
    }

    // cargo-deny reads the whole graph through `cargo metadata`, every target's crates included
    // (Windows, macOS, Android), which a build on this machine never downloads. Fetch them
    // first, so the offline check below finds them all on a cold cargo cache.
    crate::run(crate::cargo().current_dir(root).args(["fetch", "--locked"]))?;
    let status = crate::cargo()
        .current_dir(root)
        .args(["deny", "--offline", "check", "advisories"])
        .env("CHAT_ADVISORY_DBS", &dbs.path)
        .status()
        .context("cannot run cargo deny")?;
    if !status.success() {
        bail!(
            "`cargo deny check advisories` failed ({status}): a dependency has an advisory that \
             deny.toml does not list, or the database could not be read (see above)"
        );
    }
    Ok(())
}

/// The directory cargo-deny keeps a database in under its db-path: the url's last path segment
/// and the XXH64 (seed 0xca80de71) of the lowercased url.
fn db_dir_name(url: &str) -> String {
    let url = url.to_lowercase();
    let name = url.rsplit('/').next().unwrap_or("empty_");
    let hash = twox_hash::XxHash64::oneshot(0xca80de71, url.as_bytes());
    format!("{name}-{hash:016x}")
}

/// A directory removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("chat-advisory-dbs-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
