//! `cargo xtask upgrade-check <commit>`: the middle of a rolling upgrade, checked. A chat node
//! built from `<commit>` (the release being upgraded from) and one built from this tree share a
//! fresh database and one RabbitMQ prefix, with a stock node's settings. The old node starts
//! first and applies its migrations; the new one applies the newer ones on top, as in a
//! deployment. Then two users, one on each node, talk in one room (`scenario`), and each
//! side's deliveries, history and a resume across versions are checked (`delivery`).
//!
//! The old release is built in a git worktree of its own under
//! `target/upgrade-check/<commit>/src`, into `target/upgrade-check/<commit>/target`, first
//! seeded with a copy of this tree's compiled dependencies; a later run of the same commit
//! reuses it.

mod delivery;
mod scenario;

use crate::bench::{self, LocalNode, NodeProcess};
use crate::cluster::chaos::machine_class;
use anyhow::{bail, Context, Result};
use delivery::Tally;
use scenario::{NodeAt, Outcome, SideOutcome};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const DATABASE: &str = "chat_upgrade";
const OLD_NODE: Node = Node {
    name: "upgrade-old",
    addr: "127.0.0.1:8191",
    metrics_addr: "127.0.0.1:9291",
};
const NEW_NODE: Node = Node {
    name: "upgrade-new",
    addr: "127.0.0.1:8192",
    metrics_addr: "127.0.0.1:9292",
};
const BEGIN_MARKER: &str = "<!-- upgrade-check: begin -->";
const END_MARKER: &str = "<!-- upgrade-check: end -->";

/// Set by Ctrl-C: the check gives up, and the nodes, database and queues are removed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

struct Node {
    name: &'static str,
    addr: &'static str,
    metrics_addr: &'static str,
}

/// The release being upgraded from.
struct OldRelease {
    commit: String,
    short: String,
}

pub fn upgrade_check(root: &Path, commit: &str, write: bool) -> Result<()> {
    crate::services::ensure_all()?;
    let old = resolve(root, commit)?;
    // Read before anything is built, so the result names the code it checked.
    let new_code = bench::code_version(root);
    let target = crate::web::target_dir(root)?;
    let work = target.join("upgrade-check").join(&old.short);
    std::fs::create_dir_all(&work)?;
    let old_server = build_old(root, &target, &work, &old)?;
    crate::run(crate::cargo().current_dir(root).args([
        "build",
        "-p",
        "chat-backend",
        "--bin",
        "chat-server",
    ]))?;
    let new_server = target.join("debug").join("chat-server");
    let migrations = Migrations::between(&work.join("src"), root)?;

    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    bench::recreate_database(DATABASE)?;
    let prefix = format!("upgrade{}", std::process::id());
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{DATABASE}?sslmode=disable");
    let mut nodes: Vec<NodeProcess> = Vec::new();
    let checked = (|| -> Result<(Outcome, [Option<u64>; 2])> {
        for (node, server) in [(&OLD_NODE, &old_server), (&NEW_NODE, &new_server)] {
            if interrupted() {
                bail!("interrupted");
            }
            nodes.push(bench::launch_node(
                &[],
                &LocalNode {
                    server,
                    name: node.name.to_owned(),
                    addr: node.addr.to_owned(),
                    metrics_addr: node.metrics_addr.to_owned(),
                    prefix: &prefix,
                    database_url: &database_url,
                    logs: &work,
                    // A stock node: the two users and their 110 messages stay within its limits.
                    settings: &[],
                },
                Duration::from_secs(60),
            )?);
        }
        let outcome = scenario::run(&node_at(&OLD_NODE)?, &node_at(&NEW_NODE)?)?;
        let persisted = [&OLD_NODE, &NEW_NODE].map(persisted_by);
        Ok((outcome, persisted))
    })();
    for node in &mut nodes {
        bench::stop_node(node);
    }
    bench::delete_topology(&prefix);
    let dropped = bench::drop_database(DATABASE);
    let (outcome, persisted) = checked?;
    dropped?;

    let section = format!(
        "Run of {} on {} (`cargo xtask upgrade-check {commit}`): the old node at commit `{}`, \
         the new one with {}. The old node applied {} migrations to an empty database, the new \
         one {} more.\n\n{}",
        bench::now_utc(),
        machine_class(),
        old.short,
        new_code,
        migrations.old,
        migrations.newer,
        table(&old.short, &outcome, persisted)
    );
    println!("\n{section}");
    if write {
        bench::rewrite_section(
            &root.join("UPGRADING.md"),
            (BEGIN_MARKER, END_MARKER),
            &section,
        )?;
        println!("UPGRADING.md updated");
    }
    if !outcome.passed() {
        bail!(
            "the upgrade check failed: see the table above and the logs in {}",
            work.display()
        );
    }
    println!("upgrade check passed; node logs in {}", work.display());
    Ok(())
}

/// The full and short forms of `commit`, which must name a commit of this repository.
fn resolve(root: &Path, commit: &str) -> Result<OldRelease> {
    let full = git(
        root,
        &["rev-parse", "--verify", &format!("{commit}^{{commit}}")],
    )
    .with_context(|| format!("{commit} is not a commit of this repository"))?;
    let short = git(root, &["rev-parse", "--short=10", &full])?;
    Ok(OldRelease {
        commit: full,
        short,
    })
}

/// Builds the old release's `chat-server` in its worktree, reusing an earlier build.
fn build_old(root: &Path, target: &Path, work: &Path, old: &OldRelease) -> Result<PathBuf> {
    let src = work.join("src");
    let old_target = work.join("target");
    if !src.exists() {
        println!("checking out {} into {}", old.short, src.display());
        // `--force`: a worktree removed by hand (a cleaned target directory) is still
        // registered until git prunes it.
        crate::run(
            Command::new("git")
                .current_dir(root)
                .args(["worktree", "add", "--force", "--detach"])
                .arg(&src)
                .arg(&old.commit),
        )?;
    }
    let checked_out = git(&src, &["rev-parse", "HEAD"])?;
    if checked_out != old.commit {
        bail!(
            "{} holds {checked_out}, not {}: remove it (`git worktree remove --force {}`)",
            src.display(),
            old.commit,
            src.display()
        );
    }
    let seed = target.join("debug");
    if !old_target.exists() && seed.is_dir() {
        // The dependencies that did not change are not compiled again. A copy, not hard links:
        // the workspace's crates have the same file names in both trees, and cargo and rustc
        // write some files in place (fingerprints, dep-info), which would change this tree's.
        let debug = old_target.join("debug");
        std::fs::create_dir_all(&debug)?;
        println!("seeding {} from {}", debug.display(), seed.display());
        crate::run(
            Command::new("cp")
                .arg("-a")
                .arg("--reflink=auto")
                .args(
                    ["deps", "build", ".fingerprint"]
                        .map(|dir| seed.join(dir))
                        .iter()
                        .filter(|dir| dir.is_dir()),
                )
                .arg(&debug),
        )?;
    }
    crate::run(
        crate::cargo()
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &old_target)
            .args(["build", "-p", "chat-backend", "--bin", "chat-server"]),
    )?;
    Ok(old_target.join("debug").join("chat-server"))
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .context("cannot run git")?;
    if !output.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// How many migrations the old node applies to an empty database, and how many the new one
/// adds on top.
struct Migrations {
    old: usize,
    newer: usize,
}

impl Migrations {
    fn between(old_tree: &Path, new_tree: &Path) -> Result<Migrations> {
        let names = |tree: &Path| -> Result<Vec<String>> {
            let dir = tree.join("migrations");
            let mut names = Vec::new();
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
            {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
            Ok(names)
        };
        let old = names(old_tree)?;
        let newer = names(new_tree)?
            .into_iter()
            .filter(|name| !old.contains(name))
            .count();
        Ok(Migrations {
            old: old.len(),
            newer,
        })
    }
}

fn node_at(node: &Node) -> Result<NodeAt<'static>> {
    Ok(NodeAt {
        addr: node.addr.parse()?,
        node_id: node.name,
    })
}

/// Messages stored by the node's persisters, from its metrics (`None` when unreadable).
fn persisted_by(node: &Node) -> Option<u64> {
    let addr = node.metrics_addr.parse().ok()?;
    let (status, body) =
        crate::cluster::smoke::http::<()>(addr, "GET", "/metrics", None, None).ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|line| line.strip_prefix("chat_messages_persisted_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

/// The result table, one column per node, and a line on the room and the resume.
fn table(old_commit: &str, outcome: &Outcome, persisted: [Option<u64>; 2]) -> String {
    let [old, new] = &outcome.sides;
    let row = |label: &str, cell: fn(&SideOutcome) -> String| {
        format!("| {label} | {} | {} |\n", cell(old), cell(new))
    };
    let mut text =
        format!("| | Old node (`{old_commit}`) | New node (this tree) |\n|---|---|---|\n");
    text.push_str(&row("User", |side| format!("`{}`", side.user)));
    text.push_str(&row("Sent / stored / refused / unanswered", |side| {
        format!(
            "{} / {} / {} / {}",
            side.sent,
            side.stored,
            side.refused.len(),
            side.unanswered()
        )
    }));
    text.push_str(&row("Received live", |side| counts(&side.live)));
    text.push_str(&row("History from its node", |side| counts(&side.history)));
    let [old_persisted, new_persisted] =
        persisted.map(|count| count.map_or_else(|| "?".to_owned(), |count| count.to_string()));
    text.push_str(&format!(
        "| Stored by its node's persisters | {old_persisted} | {new_persisted} |\n"
    ));
    let sequence = &outcome.sequence;
    text.push_str(&format!(
        "\nRoom sequence: 1–{}, {} holes, {} numbers given twice.",
        sequence.last,
        sequence.holes.len(),
        sequence.shared.len()
    ));
    let resume = &outcome.resume;
    let said = match resume.resume {
        Some(said) if said.complete => format!("{} missed, complete", said.missed),
        Some(said) => format!("{} missed, not complete", said.missed),
        None => "nothing of a resume".to_owned(),
    };
    text.push_str(&format!(
        " Resume of `{}` on the new node after {}: `joined` said {said}; received {}.",
        old.user,
        resume.after,
        counts(&resume.received)
    ));
    let refused: Vec<&str> = outcome
        .sides
        .iter()
        .flat_map(|side| side.refused.iter().map(String::as_str))
        .collect();
    if !refused.is_empty() {
        text.push_str(&format!(" Refused: {}.", refused.join(", ")));
    }
    text.push('\n');
    text
}

fn counts(tally: &Tally) -> String {
    format!(
        "{} of {}; {} missing, {} twice, {} out of order, {} unexpected",
        tally.received,
        tally.expected,
        tally.missing,
        tally.twice,
        tally.out_of_order,
        tally.unexpected
    )
}
