//! History pages, with the newest messages of each room served from the cache.
//!
//! The newest [`RECENT`] messages of a room are cached as one entry tagged with the room's
//! message version (see [`Cache::get_versioned`]). Everything that changes a room's messages
//! (the persister after storing, edits, deletes) bumps that version after PostgreSQL has the
//! change, so an entry is never served after a change it does not show.

use crate::cache::{Cache, CacheKey};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use chat_protocol::{ChatMessage, RoomId, Seq};
use serde::{Deserialize, Serialize};

/// Messages per room kept in the cache: the first screens of a room.
pub const RECENT: usize = 100;
/// Cached entries stay well under memcached's 1 MiB item limit.
const MAX_ENTRY_BYTES: usize = 512 * 1024;

/// Which page of a room's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest messages.
    Latest { limit: usize },
    /// The messages right below a sequence number (scrolling back).
    Before { before: Seq, limit: usize },
    /// The messages right above a sequence number (catching up).
    After { after: Seq, limit: usize },
}

#[derive(Serialize, Deserialize)]
struct RecentEntry {
    version: u64,
    /// The room's newest messages, oldest first; consecutive sequence numbers.
    messages: Vec<ChatMessage>,
}

/// Reads history pages.
#[derive(Clone)]
pub struct History {
    store: Store,
    cache: Cache,
    metrics: Metrics,
}

impl History {
    pub fn new(store: Store, cache: Cache, metrics: Metrics) -> History {
        History {
            store,
            cache,
            metrics,
        }
    }

    /// One page, oldest first.
    pub async fn page(&self, room: RoomId, page: Page) -> Result<Vec<ChatMessage>, StoreError> {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        match page {
            Page::Latest { limit } if limit <= RECENT => {
                let recent = self.recent(room).await?;
                Ok(tail(recent, limit))
            }
            Page::Before { before, limit } if limit <= RECENT => {
                let recent = self.recent(room).await?;
                let lowest_needed = (before.0 - as_i64(limit)).max(1);
                let covered = match recent.first() {
                    Some(first) => first.seq.0 <= lowest_needed,
                    // An empty room: nothing below anything.
                    None => true,
                };
                if covered {
                    let below: Vec<ChatMessage> =
                        recent.into_iter().filter(|m| m.seq < before).collect();
                    return Ok(tail(below, limit));
                }
                self.store
                    .messages_before(room, Some(before), as_i64(limit))
                    .await
            }
            Page::Latest { limit } => self.store.messages_before(room, None, as_i64(limit)).await,
            Page::Before { before, limit } => {
                self.store
                    .messages_before(room, Some(before), as_i64(limit))
                    .await
            }
            Page::After { after, limit } => {
                self.store.messages_after(room, after, as_i64(limit)).await
            }
        }
    }

    /// Tells the cache that these rooms' messages changed. Call after PostgreSQL has the change
    /// and before anyone is told about it.
    pub async fn changed(&self, rooms: impl IntoIterator<Item = RoomId>) {
        let pairs = rooms
            .into_iter()
            .map(|room| (CacheKey::RecentVersion(room), CacheKey::Recent(room)))
            .collect();
        self.cache.bump(pairs).await;
    }

    /// The room's newest messages, from the cache when it has them at the current version.
    async fn recent(&self, room: RoomId) -> Result<Vec<ChatMessage>, StoreError> {
        let cached = self
            .cache
            .get_versioned::<RecentEntry>(CacheKey::RecentVersion(room), CacheKey::Recent(room))
            .await;
        let version = match cached {
            Some((version, Some(entry))) if entry.version == version => {
                self.metrics.history_cache.with_label_values(&["hit"]).inc();
                return Ok(entry.messages);
            }
            Some((version, _)) => Some(version),
            None => None,
        };
        self.metrics
            .history_cache
            .with_label_values(&["miss"])
            .inc();
        let messages = self
            .store
            .messages_before(room, None, i64::try_from(RECENT).unwrap_or(100))
            .await?;
        let size: usize = messages.iter().map(|m| m.body.len() + 128).sum();
        if let Some(version) = version.filter(|_| size <= MAX_ENTRY_BYTES) {
            let entry = RecentEntry { version, messages };
            self.cache.set(CacheKey::Recent(room), &entry).await;
            return Ok(entry.messages);
        }
        Ok(messages)
    }
}

fn tail(mut messages: Vec<ChatMessage>, limit: usize) -> Vec<ChatMessage> {
    let skip = messages.len().saturating_sub(limit);
    messages.drain(..skip);
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::{ClientMsgId, UserId};

    fn message(seq: i64) -> ChatMessage {
        ChatMessage {
            room_id: RoomId(1),
            seq: Seq(seq),
            sender_id: UserId(1),
            sender_name: "ada".into(),
            client_msg_id: ClientMsgId(format!("m{seq}")),
            body: "hi".into(),
            sent_at_ms: 0,
            edited_at_ms: None,
            deleted: false,
        }
    }

    #[test]
    fn tail_keeps_the_newest() {
        let messages: Vec<_> = (1..=5).map(message).collect();
        let seqs: Vec<i64> = tail(messages.clone(), 2).iter().map(|m| m.seq.0).collect();
        assert_eq!(seqs, vec![4, 5]);
        assert_eq!(tail(messages, 10).len(), 5);
    }
}
