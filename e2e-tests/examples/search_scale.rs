//! Message search on a large table: fills a fresh database with `--messages` messages
//! (1,000,000 by default) in 200 rooms, builds the search index the way the `message_search`
//! migration does (CONCURRENTLY) while a writer keeps inserting, and reports how long the build
//! took and how long the writer's inserts waited meanwhile; then times the first page of
//! searches through the node's own query (`Store::search_messages`).
//!
//! `cargo run --release -p e2e-tests --example search_scale -- --database-url postgres://postgres@127.0.0.1:5432/postgres`
//! (the database named by the URL is only connected to; a database `chat_search_scale` is
//! created beside it, and dropped at the end).

use anyhow::Context;
use chat_backend::store::{SearchRequest, Store};
use chat_protocol::{RoomId, UserId};
use clap::Parser;
use diesel::prelude::*;
use diesel::{sql_query, Connection, PgConnection};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The migrations' statements, as the node runs them.
const BUILD_INDEXES: [&str; 2] = [
    include_str!("../../migrations/2026-12-08-000001_message_search/up.sql"),
    include_str!("../../migrations/2026-12-08-000002_message_search_by_time/up.sql"),
];
const DATABASE: &str = "chat_search_scale";
const ROOMS: i64 = 200;
/// How many distinct words the bodies draw from: low numbers are common, high ones rare.
const VOCABULARY: i64 = 5_000;

#[derive(Parser)]
struct Args {
    /// A database to connect to first (to create the test database beside it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    database_url: String,
    #[arg(long, default_value_t = 1_000_000)]
    messages: i64,
    /// Leave the database for a look at it.
    #[arg(long)]
    keep: bool,
}

fn with_database(url: &str, name: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => format!("{url}/{name}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut admin = PgConnection::establish(&args.database_url).context("connecting")?;
    sql_query(format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).execute(&mut admin)?;
    sql_query(format!("CREATE DATABASE {DATABASE}")).execute(&mut admin)?;
    let url = with_database(&args.database_url, DATABASE);
    let store = Store::new(&url, 4, 1);
    store.migrate().await.context("migrations")?;
    let mut conn = PgConnection::establish(&url)?;
    // As a table that existed before the index: fill it without, then build it.
    sql_query("DROP INDEX messages_words").execute(&mut conn)?;
    sql_query("DROP INDEX messages_by_time").execute(&mut conn)?;
    sql_query(
        "INSERT INTO users (username, username_key, display_name) \
         SELECT 'u' || n, 'u' || n, 'User ' || n FROM generate_series(1, 20) n",
    )
    .execute(&mut conn)?;
    sql_query(format!(
        "INSERT INTO rooms (name, name_key, kind) \
         SELECT 'room ' || n, 'room ' || n, 'public' FROM generate_series(1, {ROOMS}) n"
    ))
    .execute(&mut conn)?;
    // User 1 is a member of half the rooms; the others of all.
    sql_query(
        "INSERT INTO memberships (room_id, user_id, role) \
         SELECT r.id, u.id, 'member' FROM rooms r, users u WHERE u.id > 1 OR r.id % 2 = 0",
    )
    .execute(&mut conn)?;
    let filled = Instant::now();
    // Ten words a message, word n drawn with a skew so that some words are common and most
    // rare; every 100th message is deleted.
    sql_query(format!(
        "INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at, deleted_at) \
         SELECT r, s, 1 + (i % 20), 'c' || i, \
                (SELECT string_agg('w' || (1 + floor(power(random(), 3) * {VOCABULARY}))::int, ' ') \
                   FROM generate_series(1, 10) WHERE i > 0), \
                now() - (({n} - i) || ' seconds')::interval, \
                CASE WHEN i % 100 = 0 THEN now() END \
         FROM (SELECT i, 1 + (i % {ROOMS}) AS r, 1 + i / {ROOMS} AS s \
               FROM generate_series(1, {n}) i) g",
        n = args.messages
    ))
    .execute(&mut conn)?;
    sql_query(
        "UPDATE rooms SET last_seq = (SELECT max(seq) FROM messages m WHERE m.room_id = rooms.id)",
    )
    .execute(&mut conn)?;
    sql_query("VACUUM ANALYZE messages").execute(&mut conn)?;
    println!(
        "{} messages in {ROOMS} rooms, filled in {:.1} s",
        args.messages,
        filled.elapsed().as_secs_f64()
    );

    // A writer inserting a message every 10 ms while the index is built.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        let url = url.clone();
        std::thread::spawn(move || -> anyhow::Result<(usize, Duration)> {
            let mut conn = PgConnection::establish(&url)?;
            let mut slowest = Duration::ZERO;
            let mut count = 0usize;
            while writing.load(Ordering::Relaxed) {
                let started = Instant::now();
                sql_query(
                    "WITH r AS (UPDATE rooms SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq) \
                     INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at) \
                     SELECT 1, last_seq, 2, 'w' || last_seq, 'written during the build', now() \
                     FROM r",
                )
                .execute(&mut conn)?;
                slowest = slowest.max(started.elapsed());
                count += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok((count, slowest))
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let build = Instant::now();
    for statement in BUILD_INDEXES {
        sql_query(statement).execute(&mut conn)?;
    }
    let built = build.elapsed();
    writing.store(false, Ordering::Relaxed);
    let (writes, slowest) = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    println!(
        "indexes built CONCURRENTLY in {:.1} s; {writes} inserts meanwhile, the slowest {:.1} ms",
        built.as_secs_f64(),
        slowest.as_secs_f64() * 1000.0
    );
    sql_query("ANALYZE messages").execute(&mut conn)?;

    let searches: [(&str, Option<RoomId>); 5] = [
        ("w1", None),
        ("w2 w3", None),
        ("w4000", None),
        ("\"w1 w2\"", None),
        ("w1", Some(RoomId(2))),
    ];
    println!("| query | room | hits on the first page | median ms | slowest ms |");
    println!("|---|---|---|---|---|");
    for (query, room) in searches {
        let mut times = Vec::new();
        let mut hits = 0;
        for _ in 0..7 {
            let started = Instant::now();
            let found = store
                .search_messages(SearchRequest {
                    user: UserId(1),
                    query: query.to_owned(),
                    room,
                    sender: None,
                    before: None,
                    limit: 20,
                })
                .await?;
            times.push(started.elapsed());
            hits = found.len();
        }
        times.sort();
        println!(
            "| `{query}` | {} | {hits} | {:.1} | {:.1} |",
            room.map_or("any of the user's 100".to_owned(), |room| room
                .0
                .to_string()),
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0
        );
    }
    drop(store);
    drop(conn);
    if !args.keep {
        sql_query(format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
            .execute(&mut admin)?;
    }
    Ok(())
}
