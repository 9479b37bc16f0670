//! The local services the stack and its tests need: checked, started where this machine knows
//! how, or else named with the exact command to run.

use anyhow::{bail, Result};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Service {
    name: &'static str,
    address: &'static str,
    /// Shell command that starts it on a Debian machine with the package installed.
    start: &'static str,
    install: &'static str,
}

const SERVICES: &[Service] = &[
    Service {
        name: "PostgreSQL",
        address: "127.0.0.1:5432",
        start: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        install: "apt-get install -y postgresql",
    },
    Service {
        name: "RabbitMQ",
        address: "127.0.0.1:5672",
        start: "rabbitmq-server -detached",
        install: "apt-get install -y rabbitmq-server",
    },
    Service {
        name: "Memcached",
        address: "127.0.0.1:11211",
        start: "memcached -d -u memcache -l 127.0.0.1 -p 11211 -m 256",
        install: "apt-get install -y memcached",
    },
];

fn reachable(address: &str) -> bool {
    address
        .parse::<SocketAddr>()
        .ok()
        .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok())
        .is_some()
}

fn wait_reachable(address: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if reachable(address) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

/// Makes sure every service answers, starting the ones that are installed but stopped.
pub fn ensure_all() -> Result<()> {
    for service in SERVICES {
        if reachable(service.address) {
            continue;
        }
        println!(
            "{} is not answering on {}; starting it: {}",
            service.name, service.address, service.start
        );
        let started = Command::new("sh")
            .args(["-c", service.start])
            .status()
            .map(|status| status.success())
            .unwrap_or(false);
        if !started || !wait_reachable(service.address, Duration::from_secs(60)) {
            bail!(
                "{} is not running on {}. Start it with `{}` (install it with `{}` if missing).",
                service.name,
                service.address,
                service.start,
                service.install
            );
        }
    }
    Ok(())
}

/// Makes sure the browser tests can find Chromium and chromedriver.
pub fn ensure_browser() -> Result<()> {
    for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(binary).exists() {
            bail!("{binary} is missing; install it with `apt-get install -y chromium chromium-driver`");
        }
    }
    Ok(())
}

/// The axe-core version the accessibility checks run; bumped on purpose, as its rules change.
pub const AXE_CORE_VERSION: &str = "4.14.1";

/// The command that installs axe-core under `<target>/node`, outside the repository.
pub fn axe_core_install_command(target_dir: &Path) -> String {
    format!(
        "npm install --prefix {} --no-audit --no-fund --no-save axe-core@{AXE_CORE_VERSION}",
        target_dir.join("node").display()
    )
}

/// Makes sure axe-core (npm) is installed under `<target>/node` and returns its script, the one
/// the browser tests inject into pages (they find it through `AXE_CORE_JS`).
pub fn ensure_axe_core(target_dir: &Path) -> Result<PathBuf> {
    let package = target_dir
        .join("node")
        .join("node_modules")
        .join("axe-core");
    let script = package.join("axe.min.js");
    let installed = std::fs::read_to_string(package.join("package.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| json["version"].as_str().map(str::to_owned));
    if script.exists() && installed.as_deref() == Some(AXE_CORE_VERSION) {
        return Ok(script);
    }
    let install = axe_core_install_command(target_dir);
    println!("installing axe-core: {install}");
    let done = Command::new("sh")
        .args(["-c", &install])
        .status()
        .map(|status| status.success())
        .unwrap_or(false);
    if !done || !script.exists() {
        bail!("cannot install axe-core; run `{install}` (npm comes with `apt-get install -y npm`)");
    }
    Ok(script)
}

/// The wasm-bindgen version of Cargo.lock, which the test runner must equal.
pub const WASM_BINDGEN_VERSION: &str = "0.2.130";

/// Finds `wasm-bindgen-test-runner` (what cargo runs the client's wasm tests with, in headless
/// Chromium), of the version the client is built with.
pub fn wasm_bindgen_test_runner() -> Result<PathBuf> {
    let install = format!("cargo install wasm-bindgen-cli --version {WASM_BINDGEN_VERSION}");
    let output = Command::new("wasm-bindgen-test-runner")
        .arg("--version")
        .output();
    let version = match output {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
        _ => bail!("wasm-bindgen-test-runner is missing; install it with `{install}`"),
    };
    if !version.ends_with(WASM_BINDGEN_VERSION) {
        bail!(
            "wasm-bindgen-test-runner is {version}, the client needs {WASM_BINDGEN_VERSION}; \
             install it with `{install}`"
        );
    }
    Ok(PathBuf::from("wasm-bindgen-test-runner"))
}

/// Creates a database on the local PostgreSQL if it does not exist.
pub fn ensure_database(name: &str) -> Result<()> {
    let exists = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-tAc",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        ])
        .output()?;
    if String::from_utf8_lossy(&exists.stdout).trim() == "1" {
        return Ok(());
    }
    let created = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .status()?;
    if !created.success() {
        bail!("cannot create database {name}; run `createdb -h 127.0.0.1 -U postgres {name}`");
    }
    Ok(())
}
