//! Pipelined memcached commands on a connection of their own.
//!
//! Marking a batch's rooms out of date is one `incr` per room, in series with every message's
//! delivery, and a server that answers again after an outage is owed up to thousands of
//! `delete`s. Here the commands of a request are written at once (up to 512 per write) and the
//! answers read in order, so a batch's bump is one round trip.
//!
//! This stays beside `async_memcached` because the client cannot do it: its `incr` and
//! `delete` each wait for their answer before the next command is written, and its pipelined
//! forms are `set`/`add`/`get` of many keys, or `noreply` writes whose outcome is never known
//! (and whose error lines, which memcached still sends, would be read as the next command's
//! answer). An owed delete must be known done before it is forgotten, and a bump that failed
//! must be known failed so that its entries are deleted instead.

use std::io;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// memcached's longest key.
const MAX_KEY_BYTES: usize = 250;
/// The longest answer line these commands get (a 64-bit number or a short word).
const MAX_ANSWER_BYTES: u64 = 64;
/// Commands written before their answers are read: a batch's rooms fit in one write, and a
/// long request (the deletes owed after an outage) never has memcached wait for us to read
/// while we wait for it to read.
const COMMANDS_PER_WRITE: usize = 512;

/// One command of a pipelined request. A key that is not there is an answer, not a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `incr <key> 1`: moves a counter on; a missing one stays missing.
    Incr(&'a str),
    /// `delete <key>`.
    Delete(&'a str),
}

impl<'a> Command<'a> {
    fn key(self) -> &'a str {
        match self {
            Command::Incr(key) | Command::Delete(key) => key,
        }
    }

    fn write(self, out: &mut Vec<u8>) -> io::Result<()> {
        let key = self.key();
        let valid = !key.is_empty()
            && key.len() <= MAX_KEY_BYTES
            && key.bytes().all(|byte| byte > b' ' && byte != 0x7f);
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a memcached key: {key:?}"),
            ));
        }
        match self {
            Command::Incr(key) => out.extend_from_slice(format!("incr {key} 1\r\n").as_bytes()),
            Command::Delete(key) => out.extend_from_slice(format!("delete {key}\r\n").as_bytes()),
        }
        Ok(())
    }

    /// Whether `answer` (without its line end) is one this command expects.
    fn answered_by(self, answer: &str) -> bool {
        match self {
            Command::Incr(_) => {
                answer == "NOT_FOUND"
                    || (!answer.is_empty() && answer.bytes().all(|b| b.is_ascii_digit()))
            }
            Command::Delete(_) => answer == "DELETED" || answer == "NOT_FOUND",
        }
    }
}

/// One memcached server's pipelined connection, used by one request at a time and opened on
/// first use.
pub struct Pipeline {
    addr: String,
    connection: Mutex<Option<BufReader<TcpStream>>>,
}

impl Pipeline {
    pub fn new(addr: &str) -> Pipeline {
        Pipeline {
            addr: addr.to_owned(),
            connection: Mutex::new(None),
        }
    }

    /// Closes the connection unless a request is using it (which then finds out by itself):
    /// after memcached failed for any request, the next one starts on a new connection.
    pub fn reset(&self) {
        if let Ok(mut slot) = self.connection.try_lock() {
            slot.take();
        }
    }

    /// Sends the commands in writes of up to [`COMMANDS_PER_WRITE`] and reads every answer. On
    /// any error, or if the caller gives up half way (a timeout drops this future), the
    /// connection is closed: its stream may hold answers nobody will read.
    pub async fn run(&self, commands: &[Command<'_>]) -> io::Result<()> {
        if commands.is_empty() {
            return Ok(());
        }
        let mut slot = self.connection.lock().await;
        let mut connection = match slot.take() {
            Some(connection) => connection,
            None => {
                let stream = TcpStream::connect(&self.addr).await?;
                stream.set_nodelay(true)?;
                BufReader::new(stream)
            }
        };
        let mut request = Vec::new();
        let mut line = String::new();
        for chunk in commands.chunks(COMMANDS_PER_WRITE) {
            request.clear();
            for command in chunk {
                command.write(&mut request)?;
            }
            connection.get_mut().write_all(&request).await?;
            for command in chunk {
                line.clear();
                let read = (&mut connection)
                    .take(MAX_ANSWER_BYTES)
                    .read_line(&mut line)
                    .await?;
                if read == 0 || !line.ends_with('\n') {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "memcached closed the connection or sent a line too long",
                    ));
                }
                let answer = line.trim_end_matches(['\r', '\n']);
                if !command.answered_by(answer) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("memcached answered {answer:?} to {command:?}"),
                    ));
                }
            }
        }
        *slot = Some(connection);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_written_as_memcached_reads_them() -> io::Result<()> {
        let mut out = Vec::new();
        Command::Incr("p:recent-version:1").write(&mut out)?;
        Command::Delete("p:recent:1").write(&mut out)?;
        assert_eq!(
            out,
            b"incr p:recent-version:1 1\r\ndelete p:recent:1\r\n".to_vec()
        );
        Ok(())
    }

    #[test]
    fn keys_memcached_would_misread_are_refused_before_anything_is_sent() {
        for key in ["", "a b", "a\r\nflush_all", &"k".repeat(251)] {
            let mut out = Vec::new();
            assert!(Command::Incr(key).write(&mut out).is_err(), "{key:?}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn answers_are_checked_per_command() {
        assert!(Command::Incr("k").answered_by("42"));
        assert!(Command::Incr("k").answered_by("NOT_FOUND"));
        assert!(!Command::Incr("k").answered_by("DELETED"));
        assert!(!Command::Incr("k").answered_by(""));
        assert!(!Command::Incr("k")
            .answered_by("CLIENT_ERROR cannot increment or decrement non-numeric value"));
        assert!(Command::Delete("k").answered_by("DELETED"));
        assert!(Command::Delete("k").answered_by("NOT_FOUND"));
        assert!(!Command::Delete("k").answered_by("ERROR"));
    }
}
