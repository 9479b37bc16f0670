//! Room message versions in the real memcached: one bump moves the version of every room a
//! reader has tagged an entry with, however many rooms a batch touches, and creates none.

use crate::profiles_cache::PrivateMemcached;
use anyhow::Context;
use chat_backend::cache::{Cache, CacheKey};
use chat_backend::metrics::Metrics;
use chat_protocol::RoomId;
use e2e_tests::eventually;
use e2e_tests::services::memcached_servers;

/// The room's message version as a reader sees it (created if missing); `None` if memcached
/// did not answer.
async fn version_of(cache: Cache, room: RoomId) -> Option<u64> {
    cache
        .get_versioned::<String>(CacheKey::RecentVersion(room), CacheKey::Recent(room))
        .await
        .map(|(version, _)| version)
}

fn bumps(metrics: &Metrics, result: &str) -> u64 {
    metrics
        .cache_requests
        .with_label_values(&["bump", result])
        .get()
}

#[tokio::test]
async fn one_bump_moves_every_version_a_reader_made_and_creates_none() -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let prefix = format!("versions-{}", uuid::Uuid::new_v4().simple());
    let cache = Cache::new(&memcached_servers(), &prefix, 60, metrics.clone());
    let read: Vec<RoomId> = (1..=600).map(RoomId).collect();
    let never_read: Vec<RoomId> = (601..=700).map(RoomId).collect();
    let versioned = |room: RoomId| {
        let cache = cache.clone();
        async move {
            version_of(cache, room)
                .await
                .context("memcached did not answer")
        }
    };
    let mut before = Vec::new();
    for &room in &read {
        before.push(versioned(room).await?);
    }

    // A batch touching 700 rooms (more than one write), most of which a reader has seen.
    let pairs = (read.iter().chain(&never_read))
        .map(|&room| (CacheKey::RecentVersion(room), CacheKey::Recent(room)))
        .collect();
    cache.bump(pairs).await;
    assert_eq!(bumps(&metrics, "ok"), 1);
    assert_eq!(metrics.cache_errors.get(), 0);

    for (&room, old) in read.iter().zip(before) {
        assert_eq!(versioned(room).await?, old + 1, "room {room}");
    }
    for &room in &never_read {
        assert_eq!(
            cache.get::<u64>(CacheKey::RecentVersion(room)).await,
            None,
            "room {room} had no reader, so no version"
        );
    }

    // Bumped again on the same connection: every read room moves once more.
    let again = read
        .iter()
        .map(|&room| (CacheKey::RecentVersion(room), CacheKey::Recent(room)))
        .collect();
    let moved: Vec<u64> = {
        let mut versions = Vec::new();
        for &room in &read {
            versions.push(versioned(room).await?);
        }
        versions
    };
    cache.bump(again).await;
    for (&room, old) in read.iter().zip(moved) {
        assert_eq!(versioned(room).await?, old + 1, "room {room}");
    }
    assert_eq!(bumps(&metrics, "ok"), 2);
    Ok(())
}

#[tokio::test]
async fn after_memcached_comes_back_the_first_bump_succeeds() -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let mut memcached = PrivateMemcached::start()?;
    memcached.wait_up().await?;
    let cache = Cache::new(
        &format!("127.0.0.1:{}", memcached.port),
        "back",
        60,
        metrics.clone(),
    );
    let room = RoomId(1);
    let pair = || vec![(CacheKey::RecentVersion(room), CacheKey::Recent(room))];
    let version = || version_of(cache.clone(), room);
    let first = version().await.context("memcached did not answer")?;
    cache.bump(pair()).await;
    assert_eq!(bumps(&metrics, "ok"), 1);

    // memcached restarts, empty; a read finds out, and the cache is used again after its pause.
    memcached.stop();
    let restarted = PrivateMemcached::start_on(memcached.port)?;
    restarted.wait_up().await?;
    let current = eventually("the cache to answer again", &version).await?;
    assert!(metrics.cache_errors.get() >= 1, "the restart was noticed");
    assert_ne!(current, first + 1, "a new memcached, a new version");

    // The bump's own connection died with the old memcached; it must not cost another failure.
    let errors = metrics.cache_errors.get();
    cache.bump(pair()).await;
    assert_eq!(bumps(&metrics, "error"), 0);
    assert_eq!(bumps(&metrics, "ok"), 2);
    assert_eq!(metrics.cache_errors.get(), errors);
    assert_eq!(version().await, Some(current + 1));
    Ok(())
}
