//! A TCP proxy a test can cut and restore, to take a service away from the nodes under test
//! without disturbing the shared service or the tests running beside it.

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections from `addr` to a target while up; while cut, closes every forwarded
/// connection and refuses new ones (accepts and drops them at once).
pub struct TcpProxy {
    pub addr: SocketAddr,
    state: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: &str) -> anyhow::Result<TcpProxy> {
        let target: SocketAddr = tokio::net::lookup_host(target)
            .await?
            .next()
            .with_context(|| format!("cannot resolve {target}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(watch::channel(true).0);
        let task = tokio::spawn(accept_loop(listener, target, state.clone()));
        Ok(TcpProxy { addr, state, task })
    }

    /// Closes every forwarded connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state.send_replace(false);
    }

    pub fn restore(&self) {
        self.state.send_replace(true);
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

async fn accept_loop(listener: TcpListener, target: SocketAddr, state: Arc<watch::Sender<bool>>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if !*state.borrow() {
            drop(inbound);
            continue;
        }
        let mut up = state.subscribe();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (mut inbound, mut outbound) = (inbound, outbound);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = up.wait_for(|up| !*up) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
}
