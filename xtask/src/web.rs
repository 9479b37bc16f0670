//! Builds the browser client into `web-client/dist/`, the directory the server serves at `/`.
//!
//! Three steps: compile `web-client` for `wasm32-unknown-unknown` with cargo, generate the
//! JavaScript glue with wasm-bindgen (as a library, so no `wasm-bindgen` binary has to be
//! installed), and copy `web-client/static/` beside the output.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use wasm_bindgen_cli_support::Bindgen;

const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Builds `web-client/dist/` (index.html, style.css, web_client.js, web_client_bg.wasm and
/// anything else in `web-client/static/`) and returns its path.
pub fn build_web_client(workspace_root: &Path, release: bool) -> Result<PathBuf> {
    ensure_wasm_target(workspace_root)?;
    let target_dir = target_dir(workspace_root)?;
    compile(workspace_root, &target_dir, release)?;

    let profile = if release { "release" } else { "debug" };
    let wasm = target_dir
        .join(WASM_TARGET)
        .join(profile)
        .join("web_client.wasm");
    let dist = workspace_root.join("web-client").join("dist");
    // Start empty, so that a file removed from static/ does not linger in dist/.
    if dist.exists() {
        fs::remove_dir_all(&dist).with_context(|| format!("cannot empty {}", dist.display()))?;
    }
    fs::create_dir_all(&dist).with_context(|| format!("cannot create {}", dist.display()))?;

    // The `web` target emits an ES module whose default export fetches the .wasm beside it,
    // which is what index.html imports. wasm-bindgen-cli-support is pinned to the same
    // version as the `wasm-bindgen` crate: it refuses a module built by any other version.
    Bindgen::new()
        .input_path(&wasm)
        .web(true)?
        .omit_default_module_path(false)
        .typescript(false)
        .generate(&dist)
        .with_context(|| format!("wasm-bindgen failed on {}", wasm.display()))?;

    copy_dir(&workspace_root.join("web-client").join("static"), &dist)?;
    Ok(dist)
}

/// Fails early, with the fix, when the wasm standard library is not installed: cargo's own
/// error ("can't find crate for `core`") does not say what to do.
fn ensure_wasm_target(workspace_root: &Path) -> Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    // Run from the workspace so that rustup picks the toolchain in rust-toolchain.toml.
    let output = Command::new(&rustc)
        .current_dir(workspace_root)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
        .with_context(|| format!("cannot run {}", rustc.to_string_lossy()))?;
    let libdir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || libdir.is_empty() || !Path::new(&libdir).is_dir() {
        bail!(
            "the {WASM_TARGET} target is not installed; \
             run `rustup target add {WASM_TARGET}` and try again"
        );
    }
    Ok(())
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR`, or `target/` in the workspace.
/// It is passed to cargo explicitly, so the .wasm is found where it was built.
pub(crate) fn target_dir(workspace_root: &Path) -> Result<PathBuf> {
    match std::env::var_os("CARGO_TARGET_DIR") {
        // Relative paths are relative to where cargo is run from, as cargo does it.
        Some(dir) => Ok(std::env::current_dir()
            .context("cannot read the current directory")?
            .join(dir)),
        None => Ok(workspace_root.join("target")),
    }
}

fn compile(workspace_root: &Path, target_dir: &Path, release: bool) -> Result<()> {
    // Under `cargo run`, CARGO is the cargo that runs us, with the same toolchain.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace_root)
        .args(["build", "-p", "web-client", "--target", WASM_TARGET])
        .arg("--target-dir")
        .arg(target_dir);
    if release {
        command.arg("--release");
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("building web-client for {WASM_TARGET} failed ({status})");
    }
    Ok(())
}

/// Copies the files of `from` into `to`, keeping subdirectories.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let entries = fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
        let source = entry.path();
        let destination = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            fs::create_dir_all(&destination)
                .with_context(|| format!("cannot create {}", destination.display()))?;
            copy_dir(&source, &destination)?;
        } else {
            fs::copy(&source, &destination).with_context(|| {
                format!(
                    "cannot copy {} to {}",
                    source.display(),
                    destination.display()
                )
            })?;
        }
    }
    Ok(())
}
