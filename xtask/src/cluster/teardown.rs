//! `cargo xtask cluster down`: every process in the cluster's namespaces stopped, then the
//! namespaces, the bridge, the run directory and the state file removed. It trusts the machine
//! over the state file, which a failed or interrupted `up` may have left short.

use super::net::{self, Role};
use super::state::{state_path, State};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

pub fn down(root: &Path) -> Result<()> {
    if !net::is_root() {
        bail!("`cargo xtask cluster down` needs root, as `up` did");
    }
    let state_file = state_path(root)?;
    let state = State::load(&state_file).ok();
    if let Some(state) = &state {
        stop_running_up(state.up_pid);
    }
    let namespaces = net::existing_namespaces()?;
    let mut removed = 0;

    // The balancer and the nodes first, so that nothing talks to the services while they stop.
    let (front, back): (Vec<&String>, Vec<&String>) = namespaces.iter().partition(|netns| {
        net::plan().iter().any(|host| {
            &&host.netns() == netns && matches!(host.role, Role::Balancer | Role::Node(_))
        })
    });
    for group in [front, back] {
        let pids: Vec<i32> = group.iter().flat_map(|netns| net::pids(netns)).collect();
        removed += pids.len();
        stop_processes(&pids, Duration::from_secs(20));
    }
    for netns in &namespaces {
        net::delete_namespace(netns)?;
    }
    // A namespace's veth pair goes with it, but not at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && net::existing_links()?
            .iter()
            .any(|link| link.as_str() != net::BRIDGE)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let links = net::existing_links()?;
    for link in &links {
        net::delete_link(link)?;
    }
    if let Some(state) = &state {
        if state.run_dir.exists() {
            std::fs::remove_dir_all(&state.run_dir)
                .with_context(|| format!("cannot remove {}", state.run_dir.display()))?;
        }
    }
    if state_file.exists() {
        std::fs::remove_file(&state_file)?;
    }
    if state.is_none() && namespaces.is_empty() && links.is_empty() {
        println!("no cluster to remove");
    } else {
        println!(
            "cluster removed: {removed} processes stopped, {} namespaces and {} links deleted{}",
            namespaces.len(),
            links.len(),
            state
                .map(|state| format!(", {} deleted", state.run_dir.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Stops an `up` that still runs (from another terminal, or left in the background), so that it
/// starts nothing in namespaces being removed.
fn stop_running_up(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    if pid == 0 || pid == i32::try_from(std::process::id()).unwrap_or(0) || !alive(pid) {
        return;
    }
    // The pid may have been reused since: only an xtask is stopped.
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&command).contains("xtask") {
        return;
    }
    println!("stopping the `cargo xtask cluster up` still running (pid {pid})");
    // At once: on SIGTERM it would start removing the cluster too, beside this.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && alive(pid) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, then SIGKILL for whatever still runs after `grace`.
fn stop_processes(pids: &[i32], grace: Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|&pid| alive(pid)) {
        std::thread::sleep(Duration::from_millis(200));
    }
    for &pid in pids {
        if alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|&pid| alive(pid)) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a process runs (a zombie whose parent has not reaped it yet counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
