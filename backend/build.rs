//! Rebuilds when a migration is added (the migrations are embedded in the binary), and records
//! the commit the node is built from, for the `chat_build_info` metric: the `CHAT_BUILD_COMMIT`
//! variable when set (an image build has no `.git`), else git's `HEAD`, else `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-env-changed=CHAT_BUILD_COMMIT");
    let commit = std::env::var("CHAT_BUILD_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(git_head)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=CHAT_BUILD_COMMIT={commit}");
}

/// The short hash of `HEAD`, and the files to watch so a new commit rebuilds with its hash.
fn git_head() -> Option<String> {
    let git = |args: &[&str]| {
        let output = Command::new("git").args(args).output().ok()?;
        if !output.status.success() {
            return None;
        }
        let text = String::from_utf8(output.stdout).ok()?;
        Some(text.trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // A watched file that does not exist would rerun this script on every build.
    let watch = |name: &str| {
        let path = git(&["rev-parse", "--path-format=absolute", "--git-path", name])?;
        std::path::Path::new(&path)
            .exists()
            .then(|| println!("cargo:rerun-if-changed={path}"))
    };
    watch("HEAD");
    watch("packed-refs");
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(&branch);
    }
    Some(commit)
}
