//! `chat-server`: runs one chat node until SIGINT or SIGTERM.

// The node's future is deep enough that proving it `Send` needs more than the default 128 steps.
#![recursion_limit = "256"]

use chat_backend::config::Config;
use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    chat_backend::telemetry::init(config.log_format);
    // Before the limits are worked out from it: a node holds a socket per client.
    chat_backend::admission::raise_open_file_limit();
    let listener = match listen(config.listen) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, listen = %config.listen, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let operator = match config.metrics_listen.0.map(listen).transpose() {
        Ok(operator) => operator,
        Err(error) => {
            tracing::error!(%error, listen = ?config.metrics_listen, "cannot listen for metrics");
            return ExitCode::FAILURE;
        }
    };
    match chat_backend::run_with_operator(config, listener, operator, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "node failed");
            ExitCode::FAILURE
        }
    }
}

/// Connections waiting to be accepted. When a node dies its clients all reconnect to the others
/// at once; tokio's default (1,024) drops the rest of such a burst, and each dropped client
/// waits a second or more before its connection is tried again. The kernel caps it at
/// `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 65_535;

fn listen(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
