//! Accepting client connections: the node's connection limits at the door, and deadlines for
//! connections that say nothing.
//!
//! [`Acceptor`] hands hyper only the connections [`Admission`] counts; the others are closed as
//! soon as they are accepted, before a byte is read. [`ClientConnection`] closes an HTTP
//! connection that sends nothing for its first `header_timeout`, or nothing between requests for
//! `idle_timeout`, or whose peer stops reading an answer for as long (hyper's own header-read
//! timeout then bounds how long the headers of a started request may take). Once a connection
//! is upgraded to a WebSocket these deadlines stop: the session watches its own peer.

use crate::admission::{Admission, ConnectionSlot};
use crate::forwarded::IpNet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// How long the acceptor waits after an accept error that is not about one connection (out of
/// descriptors, say) before it tries again, rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connections accepted in one go before the acceptor lets other tasks run: a flood of refused
/// connections must not hold a worker thread.
const ACCEPT_BATCH: usize = 64;

/// How long HTTP connections may stay silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept to the first byte (and, by hyper, from a request's first byte to the end of
    /// its headers).
    pub header: Duration,
    /// Between requests, and while the peer reads nothing of an answer.
    pub idle: Duration,
}

/// The listener of client connections, counting each one.
pub struct Acceptor {
    listener: TcpListener,
    admission: Arc<Admission>,
    trusted: Vec<IpNet>,
    timeouts: Timeouts,
    backoff: Option<Pin<Box<Sleep>>>,
}

impl Acceptor {
    pub fn new(
        listener: TcpListener,
        admission: Arc<Admission>,
        trusted: Vec<IpNet>,
        timeouts: Timeouts,
    ) -> Acceptor {
        Acceptor {
            listener,
            admission,
            trusted,
            timeouts,
            backoff: None,
        }
    }
}

impl Acceptor {
    /// The next connection the node's limits admit.
    pub async fn accept(&mut self) -> ClientConnection {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<ClientConnection> {
        let this = self;
        if let Some(backoff) = this.backoff.as_mut() {
            if backoff.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.backoff = None;
        }
        for _ in 0..ACCEPT_BATCH {
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, peer))) => {
                    let trusted = this.trusted.iter().any(|net| net.contains(peer.ip()));
                    let Some(slot) = this.admission.admit_connection(peer.ip(), trusted) else {
                        tracing::debug!(%peer, "connection refused: over the connection limit");
                        drop(stream);
                        continue;
                    };
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "cannot set TCP_NODELAY");
                    }
                    let connection = ClientConnection::new(stream, peer, slot, this.timeouts);
                    return Poll::Ready(connection);
                }
                // The peer gave up before it was accepted: nothing to do with the listener.
                Poll::Ready(Err(error)) if is_connection_error(&error) => continue,
                Poll::Ready(Err(error)) => {
                    tracing::warn!(%error, "cannot accept connections; retrying shortly");
                    let mut backoff = Box::pin(tokio::time::sleep(ACCEPT_BACKOFF));
                    if backoff.as_mut().poll(cx).is_pending() {
                        this.backoff = Some(backoff);
                        return Poll::Pending;
                    }
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Marks a connection as upgraded to a WebSocket, ending its HTTP deadlines. Requests carry it
/// in their extensions.
#[derive(Debug, Clone, Default)]
pub struct Upgraded(Arc<AtomicBool>);

impl Upgraded {
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_marked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// An accepted client connection: the TCP stream, its place in the count, and its deadline.
pub struct ClientConnection {
    stream: TcpStream,
    peer: SocketAddr,
    upgraded: Upgraded,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    _slot: ConnectionSlot,
}

impl ClientConnection {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        slot: ConnectionSlot,
        timeouts: Timeouts,
    ) -> ClientConnection {
        ClientConnection {
            stream,
            peer,
            upgraded: Upgraded::default(),
            deadline: Box::pin(tokio::time::sleep(timeouts.header)),
            idle: timeouts.idle,
            _slot: slot,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The handle that ends this connection's deadlines when it becomes a WebSocket.
    pub fn upgraded(&self) -> Upgraded {
        self.upgraded.clone()
    }

    /// Called with every transfer the peer takes part in.
    /// A write's outcome: progress restarts the deadline; waiting past it fails the write.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed(&mut self) {
        if !self.upgraded.is_marked() {
            let idle = self.idle;
            self.deadline.as_mut().reset(Instant::now() + idle);
        }
    }

    /// Whether the connection has waited on its peer past its deadline.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        !self.upgraded.is_marked() && self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client was silent too long")
}

impl AsyncRead for ClientConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for ClientConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, data);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, data);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
