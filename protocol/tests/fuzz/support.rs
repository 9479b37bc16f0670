//! What every fuzz property shares: its configuration, the corpus, byte mutations of valid
//! encodings and the memory a call needs at its peak.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence};
use std::path::{Path, PathBuf};

/// Cases per property in a normal test run: a few seconds each in a debug build.
pub const CASES: u32 = 3_000;

/// `CASES`, or as many as `CHAT_FUZZ_CASES` asks for a longer run.
pub fn config(regressions: &'static str) -> Config {
    let cases = std::env::var("CHAT_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..Config::default()
    }
}

/// The seed inputs of one corpus directory, by file name, in name order.
pub fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name);
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => panic!("cannot read the corpus {}: {e}", dir.display()),
    };
    paths.sort();
    let seeds: Vec<(String, Vec<u8>)> = paths
        .into_iter()
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::read(&path) {
                Ok(bytes) => (name, bytes),
                Err(e) => panic!("cannot read {}: {e}", path.display()),
            }
        })
        .collect();
    assert!(!seeds.is_empty(), "the corpus {} is empty", dir.display());
    seeds
}

/// What a seed's file name says it must give: the part before `--` (`ok--send.json`,
/// `bad_json--cut_short.json`).
pub fn expectation(file_name: &str) -> &str {
    file_name.split("--").next().unwrap_or(file_name)
}

/// The most heap a call holds at once on this thread, in bytes, with what it returned.
pub fn peak_heap<T>(call: impl FnOnce() -> T) -> (T, u64) {
    let mut result = None;
    let info = allocation_counter::measure(|| result = Some(call()));
    match result {
        Some(result) => (result, info.bytes_max),
        None => unreachable!("measure runs the call"),
    }
}

/// One change to a valid encoding.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Cut the input short here.
    Truncate(Index),
    /// XOR one byte with a mask.
    Flip(Index, u8),
    /// Put bytes in here.
    Insert(Index, Vec<u8>),
    /// Take out up to this many bytes from here.
    Remove(Index, usize),
    /// Repeat a stretch of the input in place, up to this many bytes of it, this many times.
    Repeat(Index, usize, usize),
}

/// Bytes worth putting into JSON: structure, escapes, numbers at and past their limits.
pub fn json_tokens() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            &b"\""[..],
            b"\\",
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"null",
            b"true",
            b"-0",
            b"1e999",
            b"-9223372036854775809",
            b"9223372036854775808",
            b"18446744073709551616",
            b"0.5",
            b"\"\\u0000\"",
            b"\"\\ud800\"",
            b"\"\\udc00\\ud800\"",
            b"\"\\uZZZZ\"",
            b"\xff",
            b"\xc3",
            b"\xed\xa0\x80",
            b"\"type\":\"send\"",
            b"\"kind\":\"rooms\"",
            b"\"rooms\":[{}]",
        ])
        .prop_map(<[u8]>::to_vec),
        // Deep nesting: the parser must refuse it, not overflow its stack.
        (1usize..2_000).prop_map(|depth| "[".repeat(depth).into_bytes()),
        prop::collection::vec(any::<u8>(), 1..8),
    ]
}

pub fn mutation(tokens: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        (any::<Index>(), tokens).prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove(at, len)),
        (any::<Index>(), 1usize..64, 1usize..50)
            .prop_map(|(at, len, times)| Mutation::Repeat(at, len, times)),
    ]
}

/// A valid encoding with one to four mutations applied.
pub fn mutated(
    valid: impl Strategy<Value = Vec<u8>>,
    tokens: BoxedStrategy<Vec<u8>>,
) -> impl Strategy<Value = Vec<u8>> {
    (valid, prop::collection::vec(mutation(tokens), 1..5)).prop_map(|(mut bytes, mutations)| {
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        bytes
    })
}

pub fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match mutation {
        Mutation::Truncate(at) => bytes.truncate(at.index(len + 1)),
        Mutation::Flip(at, mask) => {
            if len > 0 {
                bytes[at.index(len)] ^= mask;
            }
        }
        Mutation::Insert(at, inserted) => {
            let at = at.index(len + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
        Mutation::Remove(at, count) => {
            let at = at.index(len + 1);
            bytes.drain(at..(at + count).min(len));
        }
        Mutation::Repeat(at, count, times) => {
            let at = at.index(len + 1);
            let stretch = bytes[at..(at + count).min(len)].to_vec();
            let repeated: Vec<u8> = stretch.repeat(*times);
            bytes.splice(at..at, repeated);
        }
    }
}

/// A string of up to `max_chars` characters of any kind, the odd ones (controls, quotes,
/// backslashes, right-to-left marks, astral planes) often.
pub fn text(max_chars: usize) -> impl Strategy<Value = String> {
    let char = prop_oneof![
        4 => any::<char>(),
        2 => prop::char::range(' ', '~'),
        1 => prop::sample::select(vec!['"', '\\', '\n', '\0', '\u{7f}', '\u{202e}', '\u{200b}', '\u{fffd}', '\u{1f600}', 'é']),
    ];
    prop::collection::vec(char, 0..=max_chars).prop_map(|chars| chars.into_iter().collect())
}
