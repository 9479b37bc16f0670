//! A TCP proxy a test can cut and restore, to take a service away from the nodes under test
//! without disturbing the shared service or the tests running beside it. Given several targets
//! it is a failover load balancer: each new connection goes to the first target that takes it,
//! so clients of a node that died reconnect to the next one through the same address.

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with the connections it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Keeps every connection open and accepts new ones, but passes nothing on in either
    /// direction until forwarding resumes: a service that stopped answering.
    Stall,
    /// Closes every forwarded connection and refuses new ones.
    Cut,
}

/// Forwards connections from `addr` to a target while up; can stall them or cut them.
pub struct TcpProxy {
    pub addr: SocketAddr,
    state: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: &str) -> anyhow::Result<TcpProxy> {
        TcpProxy::start_failover(&[target]).await
    }

    /// A proxy that sends each new connection to the first of `targets` that accepts it, as a
    /// load balancer that takes a dead node out does.
    pub async fn start_failover(targets: &[&str]) -> anyhow::Result<TcpProxy> {
        let mut resolved = Vec::new();
        for target in targets {
            resolved.push(
                tokio::net::lookup_host(target)
                    .await?
                    .next()
                    .with_context(|| format!("cannot resolve {target}"))?,
            );
        }
        anyhow::ensure!(!resolved.is_empty(), "a proxy needs a target");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(watch::channel(Mode::Forward).0);
        let task = tokio::spawn(accept_loop(listener, Arc::new(resolved), state.clone()));
        Ok(TcpProxy { addr, state, task })
    }

    /// Closes every forwarded connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state.send_replace(Mode::Cut);
    }

    /// Holds every byte in both directions, connections left open, until
    /// [`TcpProxy::restore`], which passes on what was held.
    pub fn stall(&self) {
        self.state.send_replace(Mode::Stall);
    }

    pub fn restore(&self) {
        self.state.send_replace(Mode::Forward);
    }

    /// The target URL with its host and port replaced by the proxy's.
    pub fn url_for(&self, scheme_and_credentials: &str, rest: &str) -> String {
        format!("{scheme_and_credentials}{}{rest}", self.addr)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    targets: Arc<Vec<SocketAddr>>,
    state: Arc<watch::Sender<Mode>>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if *state.borrow() == Mode::Cut {
            drop(inbound);
            continue;
        }
        let (up, down) = (state.subscribe(), state.subscribe());
        let targets = targets.clone();
        tokio::spawn(async move {
            let Some(outbound) = first_connected(&targets).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (inbound_read, inbound_write) = inbound.into_split();
            let (outbound_read, outbound_write) = outbound.into_split();
            // Either direction ending ends the connection.
            tokio::select! {
                _ = pump(inbound_read, outbound_write, up) => {}
                _ = pump(outbound_read, inbound_write, down) => {}
            }
        });
    }
}

/// A connection to the first target that accepts one.
async fn first_connected(targets: &[SocketAddr]) -> Option<TcpStream> {
    for target in targets {
        if let Ok(stream) = TcpStream::connect(target).await {
            return Some(stream);
        }
    }
    None
}

/// Copies one direction of a connection while forwarding; returns at end of stream, on an
/// error, or when the proxy is cut.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if !forwarding(&mut mode).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = mode.changed() => continue,
        };
        let count = match read {
            Ok(0) | Err(_) => return,
            Ok(count) => count,
        };
        // What was read while a stall began is held with the rest.
        if !forwarding(&mut mode).await || to.write_all(&buffer[..count]).await.is_err() {
            return;
        }
    }
}

/// Waits out a stall: true once forwarding, false when cut (or the proxy is gone).
async fn forwarding(mode: &mut watch::Receiver<Mode>) -> bool {
    match mode.wait_for(|mode| *mode != Mode::Stall).await {
        Ok(mode) => *mode == Mode::Forward,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    while let Ok(n) = socket.read(&mut buffer).await {
                        if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(addr)
    }

    async fn round_trip(addr: SocketAddr) -> bool {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            return false;
        };
        if stream.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buffer = [0u8; 4];
        matches!(
            tokio::time::timeout(
                std::time::Duration::from_secs(2),
                stream.read_exact(&mut buffer)
            )
            .await,
            Ok(Ok(_))
        ) && &buffer == b"ping"
    }

    #[tokio::test]
    async fn cut_refuses_and_restore_forwards_again() -> anyhow::Result<()> {
        let target = echo_server().await?;
        let proxy = TcpProxy::start(&target.to_string()).await?;
        assert!(round_trip(proxy.addr).await);
        proxy.cut();
        assert!(!round_trip(proxy.addr).await);
        proxy.restore();
        assert!(round_trip(proxy.addr).await);
        Ok(())
    }

    #[tokio::test]
    async fn failover_sends_new_connections_to_the_next_target_that_takes_them(
    ) -> anyhow::Result<()> {
        // A port nothing listens on: a node that died.
        let dead = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        let alive = echo_server().await?;
        let proxy = TcpProxy::start_failover(&[&dead.to_string(), &alive.to_string()]).await?;
        assert!(round_trip(proxy.addr).await);
        Ok(())
    }

    #[tokio::test]
    async fn stall_holds_the_bytes_until_restore() -> anyhow::Result<()> {
        let target = echo_server().await?;
        let proxy = TcpProxy::start(&target.to_string()).await?;
        let mut stream = TcpStream::connect(proxy.addr).await?;
        stream.write_all(b"one").await?;
        let mut buffer = [0u8; 3];
        stream.read_exact(&mut buffer).await?;
        assert_eq!(&buffer, b"one");

        proxy.stall();
        stream.write_all(b"two").await?;
        let held = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            stream.read_exact(&mut buffer),
        )
        .await;
        assert!(held.is_err(), "nothing comes back while stalled");

        proxy.restore();
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            stream.read_exact(&mut buffer),
        )
        .await??;
        assert_eq!(&buffer, b"two", "what was held arrives after the stall");
        Ok(())
    }
}
