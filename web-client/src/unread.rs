//! The user's rooms with their unread counts, kept live for every room while one is open.
//!
//! The server's `GET /api/me/rooms` gives each room's newest sequence number, the read marker
//! and the count of unread messages from others. After that, a `message` of the open room or a
//! `room_activity` of another one moves the room's newest sequence number; messages of others
//! above the highest number already counted add to the count (so the same message is never
//! counted twice, whichever way it arrives), and `read_marker` sets the count to the server's.
//! The server counts up to `MAX_UNREAD_COUNT`; [`count_label`] shows that many or more as
//! "999+".

use chat_protocol::api::{Room, RoomKind};
use chat_protocol::limits::MAX_UNREAD_COUNT;
use chat_protocol::{RoomId, Seq, UserId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEntry {
    pub room: Room,
    /// The newest sequence number known in the room.
    pub last_seq: Seq,
    /// Everything up to here is read.
    pub read_seq: Seq,
    pub unread: i64,
}

impl RoomEntry {
    pub fn from_room(room: Room) -> RoomEntry {
        let (last_seq, read_seq, unread) = match room.unread {
            Some(u) => (u.last_seq, u.last_read_seq, u.count),
            None => (Seq(0), Seq(0), 0),
        };
        RoomEntry {
            room,
            last_seq,
            read_seq,
            unread,
        }
    }

    pub fn id(&self) -> RoomId {
        self.room.room_id
    }

    pub fn is_direct(&self) -> bool {
        self.room.kind == RoomKind::Direct
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rooms {
    pub entries: Vec<RoomEntry>,
}

impl Rooms {
    /// The server's list replaces the known one; counts come from the server.
    pub fn load(&mut self, rooms: Vec<Room>) {
        let mut entries: Vec<RoomEntry> = rooms.into_iter().map(RoomEntry::from_room).collect();
        entries.sort_by_key(|e| e.room.name.to_lowercase());
        self.entries = entries;
    }

    pub fn get(&self, room_id: RoomId) -> Option<&RoomEntry> {
        self.entries.iter().find(|e| e.id() == room_id)
    }

    /// New messages up to `seq` arrived in a room; the newest was sent by `sender`. `counted`
    /// says whether they count as unread (not when the user is reading the room). Returns the
    /// number of messages newly counted.
    pub fn activity(&mut self, room_id: RoomId, seq: Seq, sender: UserId, me: UserId) -> i64 {
        let Some(entry) = self.entries.iter_mut().find(|e| e.room.room_id == room_id) else {
            return 0;
        };
        if seq <= entry.last_seq {
            return 0;
        }
        let new = if sender == me {
            // Sending reads the room up to one's own message.
            entry.read_seq = seq;
            entry.unread = 0;
            0
        } else {
            // Only the newest sender is known: messages between count as from others.
            seq.0 - entry.last_seq.0.max(entry.read_seq.0)
        };
        entry.last_seq = seq;
        entry.unread += new.max(0);
        new.max(0)
    }

    /// The read marker moved (this tab or another of the user's connections).
    pub fn read_marker(&mut self, room_id: RoomId, seq: Seq, unread: i64) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.room.room_id == room_id) {
            if seq >= entry.read_seq {
                entry.read_seq = seq;
                entry.unread = unread.max(0);
                entry.last_seq = entry.last_seq.max(seq);
            }
        }
    }

    /// Unread messages in every room.
    pub fn total_unread(&self) -> i64 {
        self.entries.iter().map(|e| e.unread).sum()
    }

    /// The tab title: the unread count first, so it shows in a narrow tab.
    pub fn title(&self, room: Option<&str>) -> String {
        let base = match room {
            Some(name) => format!("{name} · Chat"),
            None => "Chat".to_owned(),
        };
        match self.total_unread() {
            0 => base,
            n => format!("({}) {base}", count_label(n)),
        }
    }
}

/// An unread count as shown: the server stops counting at `MAX_UNREAD_COUNT`, so from there on
/// it is "999+".
pub fn count_label(count: i64) -> String {
    if count >= MAX_UNREAD_COUNT {
        format!("{}+", MAX_UNREAD_COUNT - 1)
    } else {
        count.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::api::Unread;

    fn room(id: i64, name: &str, last: i64, read: i64, count: i64) -> Room {
        Room {
            room_id: RoomId(id),
            name: name.into(),
            kind: RoomKind::Public,
            role: None,
            unread: Some(Unread {
                last_seq: Seq(last),
                last_read_seq: Seq(read),
                count,
            }),
            invite_policy: None,
        }
    }

    #[test]
    fn activity_counts_each_message_once() {
        let me = UserId(1);
        let mut rooms = Rooms::default();
        rooms.load(vec![room(2, "b", 5, 5, 0), room(1, "A", 10, 8, 2)]);
        assert_eq!(rooms.entries[0].room.name, "A");
        assert_eq!(rooms.total_unread(), 2);
        assert_eq!(rooms.activity(RoomId(2), Seq(7), UserId(9), me), 2);
        // The same activity again (a resend, a message frame of the same seq) adds nothing.
        assert_eq!(rooms.activity(RoomId(2), Seq(7), UserId(9), me), 0);
        assert_eq!(rooms.activity(RoomId(2), Seq(6), UserId(9), me), 0);
        assert_eq!(rooms.total_unread(), 4);
        assert_eq!(rooms.title(Some("A")), "(4) A · Chat");
        // Own messages read the room.
        rooms.activity(RoomId(2), Seq(8), me, me);
        assert_eq!(rooms.get(RoomId(2)).map(|e| e.unread), Some(0));
        rooms.read_marker(RoomId(1), Seq(10), 0);
        assert_eq!(rooms.total_unread(), 0);
        assert_eq!(rooms.title(None), "Chat");
        // An older marker does not bring counts back.
        rooms.read_marker(RoomId(1), Seq(9), 1);
        assert_eq!(rooms.total_unread(), 0);
        // Unknown rooms are ignored until the list is reloaded.
        assert_eq!(rooms.activity(RoomId(99), Seq(1), UserId(9), me), 0);
    }

    #[test]
    fn counts_at_the_servers_cap_show_as_more_than_999() {
        assert_eq!(count_label(998), "998");
        assert_eq!(count_label(999), "999");
        assert_eq!(count_label(MAX_UNREAD_COUNT), "999+");
        let mut rooms = Rooms::default();
        rooms.load(vec![room(1, "A", 5_000, 0, MAX_UNREAD_COUNT)]);
        // Messages that arrive later add to the capped count, which stays "999+".
        rooms.activity(RoomId(1), Seq(5_001), UserId(9), UserId(1));
        assert_eq!(rooms.title(None), "(999+) Chat");
    }
}
