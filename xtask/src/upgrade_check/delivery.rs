//! What one user received, held against what was stored: every message once, in sequence
//! order, under the sequence number it was stored with; and the room's sequence without holes.

use std::collections::{BTreeMap, HashSet};

/// A message as a user received it (live, in a resume, or in a history page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) seq: i64,
    /// Its client message id, unique in the room (each user's ids have their own prefix).
    pub(crate) id: String,
}

/// How the messages one user received compare with those expected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) expected: usize,
    /// Expected messages received at least once.
    pub(crate) received: usize,
    pub(crate) missing: usize,
    /// Receptions of a message beyond its first.
    pub(crate) twice: usize,
    /// Receptions whose sequence number is not above the one received before.
    pub(crate) out_of_order: usize,
    /// Receptions of a message not expected, or under another sequence number than it was
    /// stored with.
    pub(crate) unexpected: usize,
}

impl Tally {
    pub(crate) fn is_clean(&self) -> bool {
        self.missing == 0 && self.twice == 0 && self.out_of_order == 0 && self.unexpected == 0
    }
}

/// Holds `received`, in the order it arrived, against `expected` (client message id →
/// the sequence number it was stored with).
pub(crate) fn tally(expected: &BTreeMap<String, i64>, received: &[Received]) -> Tally {
    let mut seen = HashSet::new();
    let mut tally = Tally {
        expected: expected.len(),
        ..Tally::default()
    };
    let mut last = None;
    for message in received {
        if !seen.insert(message.id.as_str()) {
            tally.twice += 1;
            continue;
        }
        if expected.get(&message.id) != Some(&message.seq) {
            tally.unexpected += 1;
        }
        if last.is_some_and(|last| message.seq <= last) {
            tally.out_of_order += 1;
        }
        last = Some(last.map_or(message.seq, |last: i64| last.max(message.seq)));
    }
    tally.received = expected
        .keys()
        .filter(|id| seen.contains(id.as_str()))
        .count();
    tally.missing = tally.expected - tally.received;
    tally
}

/// A room's sequence numbers over everything stored in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sequence {
    /// The highest sequence number (0 for an empty room); a room's first message has 1.
    pub(crate) last: i64,
    /// Numbers from 1 to `last` that no message has.
    pub(crate) holes: Vec<i64>,
    /// Numbers given to more than one message.
    pub(crate) shared: Vec<i64>,
}

impl Sequence {
    pub(crate) fn is_continuous(&self) -> bool {
        self.holes.is_empty() && self.shared.is_empty()
    }
}

/// The sequence of a room whose messages were stored with `seqs`, in any order.
pub(crate) fn sequence(seqs: impl IntoIterator<Item = i64>) -> Sequence {
    let mut sorted: Vec<i64> = seqs.into_iter().collect();
    sorted.sort_unstable();
    let last = sorted.last().copied().unwrap_or(0);
    let mut shared: Vec<i64> = sorted
        .windows(2)
        .filter(|pair| pair[0] == pair[1])
        .map(|pair| pair[0])
        .collect();
    shared.dedup();
    sorted.dedup();
    let holes = (1..=last)
        .filter(|seq| sorted.binary_search(seq).is_err())
        .collect();
    Sequence {
        last,
        holes,
        shared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs
            .iter()
            .map(|(id, seq)| ((*id).to_owned(), *seq))
            .collect()
    }

    fn received(pairs: &[(&str, i64)]) -> Vec<Received> {
        pairs
            .iter()
            .map(|(id, seq)| Received {
                seq: *seq,
                id: (*id).to_owned(),
            })
            .collect()
    }

    #[test]
    fn everything_once_in_order_is_clean() {
        let stored = expected(&[("a-0", 1), ("b-0", 2), ("a-1", 3)]);
        let tally = tally(&stored, &received(&[("a-0", 1), ("b-0", 2), ("a-1", 3)]));
        assert_eq!(
            tally,
            Tally {
                expected: 3,
                received: 3,
                ..Tally::default()
            }
        );
        assert!(tally.is_clean());
    }

    #[test]
    fn a_message_not_received_is_missing() {
        let stored = expected(&[("a-0", 1), ("b-0", 2), ("a-1", 3)]);
        let tally = tally(&stored, &received(&[("a-0", 1), ("a-1", 3)]));
        assert_eq!((tally.received, tally.missing), (2, 1));
        assert_eq!(tally.out_of_order, 0, "a gap is not a reordering");
        assert!(!tally.is_clean());
    }

    #[test]
    fn a_message_received_again_counts_once_as_twice() {
        let stored = expected(&[("a-0", 1), ("b-0", 2)]);
        let tally = tally(&stored, &received(&[("a-0", 1), ("b-0", 2), ("a-0", 1)]));
        assert_eq!((tally.received, tally.twice, tally.out_of_order), (2, 1, 0));
        assert!(!tally.is_clean());
    }

    #[test]
    fn a_lower_sequence_number_after_a_higher_one_is_out_of_order() {
        let stored = expected(&[("a-0", 1), ("b-0", 2), ("a-1", 3)]);
        let tally = tally(&stored, &received(&[("b-0", 2), ("a-0", 1), ("a-1", 3)]));
        assert_eq!((tally.received, tally.out_of_order), (3, 1));
    }

    #[test]
    fn an_unknown_message_or_another_sequence_number_is_unexpected() {
        let stored = expected(&[("a-0", 1), ("b-0", 2)]);
        let tally = tally(&stored, &received(&[("a-0", 1), ("b-0", 5), ("c-0", 6)]));
        assert_eq!((tally.received, tally.unexpected, tally.missing), (2, 2, 0));
        assert!(!tally.is_clean());
    }

    #[test]
    fn nothing_expected_and_nothing_received_is_clean() {
        assert!(tally(&BTreeMap::new(), &[]).is_clean());
    }

    #[test]
    fn a_sequence_from_one_without_holes_is_continuous() {
        let room = sequence([3, 1, 2]);
        assert_eq!(room.last, 3);
        assert!(room.is_continuous());
        assert!(sequence(std::iter::empty()).is_continuous());
    }

    #[test]
    fn holes_and_shared_numbers_are_named() {
        let room = sequence([2, 4, 4, 6]);
        assert_eq!(room.last, 6);
        assert_eq!(room.holes, vec![1, 3, 5]);
        assert_eq!(room.shared, vec![4]);
        assert!(!room.is_continuous());
    }
}
