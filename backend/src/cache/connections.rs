//! A small pool of async connections to one memcached server.
//!
//! Building the pool connects nothing, so a node starts while memcached is down; a connection
//! is opened when a request finds none idle, and at most [`Connections::new`]'s `size` are out
//! at once (a semaphore: the next request waits for one to come back). A checkout sends
//! nothing: a connection is trusted until a request on it fails. A connection goes back to
//! the pool only through [`Connection::release`], after a request it completed; one dropped
//! half way (an error, or a timeout that dropped the request) is closed, since its stream may
//! hold an answer nobody read.

use async_memcached::{Client, Error};
use std::sync::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The connections of one server: those idle, and a permit for each that may be out.
pub struct Connections {
    /// What `async_memcached::Client::new` connects to: `tcp://host:port`.
    dsn: String,
    /// A std mutex: it is held only to push or pop, never across an await.
    idle: Mutex<Vec<Client>>,
    permits: Semaphore,
    size: usize,
}

/// A connection checked out of the pool, with its permit.
pub struct Connection<'a> {
    idle: &'a Mutex<Vec<Client>>,
    client: Client,
    _permit: SemaphorePermit<'a>,
}

impl Connections {
    /// Connections to `address` (`host:port`), at most `size` at a time.
    pub fn new(address: &str, size: usize) -> Connections {
        Connections {
            dsn: format!("tcp://{address}"),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size),
            size,
        }
    }

    /// An idle connection, or a new one when none is idle; waits while all are out.
    pub async fn get(&self) -> Result<Connection<'_>, Error> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::ConnectionClosed)?;
        let idle = crate::locks::lock(&self.idle).pop();
        let client = match idle {
            Some(client) => client,
            None => self.connect().await?,
        };
        Ok(Connection {
            idle: &self.idle,
            client,
            _permit: permit,
        })
    }

    /// A new connection outside the pool (the probe's); [`Connections::adopt`] hands it over.
    pub async fn connect(&self) -> Result<Client, Error> {
        Client::new(&self.dsn).await
    }

    /// Puts a connection opened by [`Connections::connect`] with the idle ones.
    pub fn adopt(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = crate::locks::lock(&self.idle);
        if idle.len() < self.size {
            idle.push(client);
        }
    }

    /// Closes the idle connections: after the server failed they may lead to a process that is
    /// gone. Those checked out come back only if their request succeeds.
    pub fn clear(&self) {
        let mut idle = crate::locks::lock(&self.idle);
        idle.clear();
    }
}

impl Connection<'_> {
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Gives the connection back for the next request, unless the client closed it.
    pub fn release(self) {
        if self.client.is_closed() {
            return;
        }
        let mut idle = crate::locks::lock(self.idle);
        idle.push(self.client);
    }
}
