//! Message search (`GET /api/search`): the answer's types, which words a query looks for, and
//! where they are in a message, so that every client marks the same words.
//!
//! A query is words, as a search box takes them: every word must be in the message (any case),
//! `"two words"` must be next to each other, `a or b` takes either, and `-word` excludes a word.
//! The server hands the query to PostgreSQL's `websearch_to_tsquery` with the `simple`
//! configuration (no stemming, no stop words: the same in every language).

use crate::frame::ChatMessage;
use crate::ids::RoomId;
use crate::limits::MAX_SEARCH_TERMS;
use serde::{Deserialize, Serialize};

/// One page of results, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A message found, with the words of the query marked in its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    pub message: ChatMessage,
    pub marks: Vec<Mark>,
}

/// A matched word: byte offsets into the message's body (UTF-8), `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub start: usize,
    pub end: usize,
}

/// Where a page ends: the last hit's time, room and sequence number (results are ordered by
/// those three, newest first). Written as `<sent_at_ms>.<room_id>.<seq>`; clients pass it back
/// as they got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub sent_at_ms: i64,
    pub room_id: RoomId,
    pub seq: i64,
}

impl Cursor {
    pub fn of(message: &ChatMessage) -> Cursor {
        Cursor {
            sent_at_ms: message.sent_at_ms,
            room_id: message.room_id,
            seq: message.seq.0,
        }
    }

    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.sent_at_ms, self.room_id.0, self.seq)
    }

    /// `None` for anything [`Cursor::encode`] did not write.
    pub fn parse(text: &str) -> Option<Cursor> {
        let mut parts = text.split('.');
        let sent_at_ms = parts.next()?.parse().ok()?;
        let room_id = RoomId(parts.next()?.parse().ok()?);
        let seq = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Cursor {
            sent_at_ms,
            room_id,
            seq,
        })
    }
}

/// The runs of letters and digits of `text`, with their byte offsets.
fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut start = None;
    let mut chars = text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')));
    std::iter::from_fn(move || {
        for (at, c) in chars.by_ref() {
            match (start, c.is_alphanumeric()) {
                (None, true) => start = Some(at),
                (Some(from), false) => {
                    start = None;
                    return Some((from, &text[from..at]));
                }
                _ => {}
            }
        }
        None
    })
}

/// Every word of the query (in lower case), `or` and excluded (`-word`) ones aside, without
/// repeats.
pub fn terms(query: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for (at, word) in words(query) {
        let excluded = query[..at].ends_with('-')
            && query[..at - 1]
                .chars()
                .next_back()
                .is_none_or(char::is_whitespace);
        let word = word.to_lowercase();
        if excluded || word == "or" || terms.contains(&word) {
            continue;
        }
        terms.push(word);
    }
    terms
}

/// True when the query has no more words (`or` and excluded ones included) than a search
/// takes.
pub fn within_terms(query: &str) -> bool {
    words(query).count() <= MAX_SEARCH_TERMS
}

/// The words of `body` that are among `terms`, in order.
pub fn marks(body: &str, terms: &[String]) -> Vec<Mark> {
    words(body)
        .filter(|(_, word)| terms.contains(&word.to_lowercase()))
        .map(|(start, word)| Mark {
            start,
            end: start + word.len(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientMsgId, Seq, UserId};

    #[test]
    fn terms_are_the_words_looked_for_in_lower_case() {
        assert_eq!(terms("Deploy  FRIDAY"), vec!["deploy", "friday"]);
        assert_eq!(
            terms("\"release notes\" or changelog"),
            vec!["release", "notes", "changelog"]
        );
        assert_eq!(terms("deploy -friday deploy"), vec!["deploy"]);
        // A hyphen inside a word does not exclude what follows.
        assert_eq!(terms("e-mail"), vec!["e", "mail"]);
        assert_eq!(terms("Ünïcode 日本"), vec!["ünïcode", "日本"]);
        assert!(terms("?! …").is_empty());
    }

    #[test]
    fn marks_are_byte_ranges_of_whole_words_in_any_case() {
        let body = "Der Äpfel-Deploy: deploy, DEPLOYED!";
        let marks = marks(body, &terms("deploy äpfel"));
        let marked: Vec<&str> = marks.iter().map(|m| &body[m.start..m.end]).collect();
        assert_eq!(marked, vec!["Äpfel", "Deploy", "deploy"]);
    }

    #[test]
    fn a_cursor_reads_back_what_it_wrote_and_nothing_else() {
        let message = ChatMessage {
            room_id: RoomId(7),
            seq: Seq(42),
            sender_id: UserId(1),
            sender_name: "ada".into(),
            client_msg_id: ClientMsgId("c".into()),
            body: "hi".into(),
            sent_at_ms: 1_795_817_270_814,
            edited_at_ms: None,
            deleted: false,
        };
        let cursor = Cursor::of(&message);
        assert_eq!(Cursor::parse(&cursor.encode()), Some(cursor));
        for bad in ["", "1.2", "1.2.3.4", "a.2.3", "1..3", "1.2.3 "] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_query_is_bounded_in_words() {
        assert!(within_terms("a b c d e f g h"));
        assert!(!within_terms("a b c d e f g h i"));
    }
}
