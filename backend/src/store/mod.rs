//! The store: the only module that speaks SQL.
//!
//! Diesel and r2d2 block, so every call goes through [`Store::run`], which runs it on tokio's
//! blocking pool with the caller's tracing span. The persisters store through connections of
//! their own ([`Store::new`]).

mod accounts;
mod arrays;
pub mod batch;
mod messages;
mod names;
mod persist;
mod rooms;
pub mod schema;
mod search;

pub use accounts::{NewUser, SessionUser, UserRow};
pub use messages::{CatchUp, CatchUpRequest, ChangeOutcome, ReadState, StoredRow, READ_STATES_SQL};
pub use persist::{MessageOutcome, SeqCounters};
pub use rooms::{Removal, RoomRow};
pub use search::SearchRequest;

use batch::{BatchFailed, Batched, Limits};
use chat_protocol::{RoomId, Seq, UserId};

use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, ManageConnection, Pool, PooledConnection, R2D2Connection};
use diesel::RunQueryDsl;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Key of the advisory lock that serialises migrations when several nodes start together.
const MIGRATION_LOCK_KEY: i64 = 0x0063_6861_746d_6967; // "chatmig" in ASCII
/// Between tries for that lock.
const MIGRATION_LOCK_RETRY: Duration = Duration::from_millis(100);

pub type DbConnection = PgConnection;

/// Errors from the store. None of them is caused by a client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[from] diesel::r2d2::PoolError),
    #[error("query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A batched membership check failed (its batch's query failed, logged there).
    #[error("{0}")]
    Check(#[from] crate::directory::CheckFailed),
    /// A batched read failed (its batch's query failed, logged there).
    #[error("{0}")]
    Batch(#[from] BatchFailed),
}

impl StoreError {
    /// True when the failure says nothing about the data: the database was unreachable, the
    /// connection broke, or a transaction lost a race. Such work is retried as it is.
    pub fn is_transient(&self) -> bool {
        use diesel::result::{DatabaseErrorKind as Kind, Error};
        match self {
            StoreError::Unavailable(_)
            | StoreError::Task(_)
            | StoreError::Check(_)
            | StoreError::Batch(_) => true,
            StoreError::Query(Error::DatabaseError(
                Kind::ClosedConnection | Kind::UnableToSendCommand | Kind::SerializationFailure,
                _,
            )) => true,
            StoreError::Query(Error::BrokenTransactionManager) => true,
            StoreError::Query(_) | StoreError::Migration(_) => false,
        }
    }
}

/// A pool of PostgreSQL connections.
///
/// A checkout costs no round trip: r2d2's test on checkout (a `SELECT 1` before every use) would
/// double the round trips of every query. Instead a connection is tested when something suggests
/// it may be dead: after its own work failed (then a failed ping discards it), and once after any
/// connection of the pool was found dead (an outage usually kills them all), which the pool's
/// *generation* records. So after an outage at most one piece of work fails on a dead
/// connection, and the rest find live ones.
#[derive(Clone)]
pub struct Store {
    connections: Connections,
    /// The persisters' connections, which plan prepared statements once ([`Store::new`]).
    persisting: Connections,
    batches: Arc<Batches>,
}

/// The pool itself, which the batching tasks hold (they must not hold the batches that own
/// their queues, or they would never stop).
#[derive(Clone)]
pub struct Connections {
    pool: Pool<Manager>,
    generation: Arc<AtomicU64>,
}

/// A pool's connections at one moment.
#[derive(Debug, Clone, Copy)]
pub struct PoolState {
    /// Connections open, idle or in use.
    pub open: u32,
    pub idle: u32,
    /// Most connections the pool opens.
    pub max: u32,
}

/// The reads that are batched (see [`batch`]).
struct Batches {
    sessions: Batched<Vec<u8>, Option<SessionUser>>,
    last_seqs: Batched<RoomId, Seq>,
    catch_ups: Batched<CatchUpRequest, CatchUp>,
    room_ids: Batched<UserId, Vec<RoomId>>,
}

impl Default for Batches {
    fn default() -> Self {
        const READS: Limits = Limits {
            max_keys: 1000,
            in_flight: 2,
        };
        Batches {
            sessions: Batched::new("session", READS),
            last_seqs: Batched::new("last_seq", READS),
            room_ids: Batched::new("room_ids", READS),
            catch_ups: Batched::new(
                "catch_up",
                Limits {
                    max_keys: 200,
                    in_flight: 2,
                },
            ),
        }
    }
}

/// Diesel's connection manager, with connections that can be marked dead.
#[derive(Debug)]
pub struct Manager {
    inner: ConnectionManager<PgConnection>,
    generation: Arc<AtomicU64>,
    /// Run on every new connection before it is used.
    setup: Option<&'static str>,
}

/// A pooled connection: the pool generation it was last known alive in, and whether it is dead.
pub struct Tracked {
    conn: PgConnection,
    generation: u64,
    dead: bool,
}

impl ManageConnection for Manager {
    type Connection = Tracked;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Tracked, Self::Error> {
        let mut conn = self.inner.connect()?;
        if let Some(setup) = self.setup {
            diesel::sql_query(setup)
                .execute(&mut conn)
                .map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(Tracked {
            conn,
            generation: self.generation.load(Ordering::Acquire),
            dead: false,
        })
    }

    fn is_valid(&self, conn: &mut Tracked) -> Result<(), Self::Error> {
        self.inner.is_valid(&mut conn.conn)
    }

    fn has_broken(&self, conn: &mut Tracked) -> bool {
        conn.dead || self.inner.has_broken(&mut conn.conn)
    }
}

/// Most dead connections one checkout discards before giving up.
const MAX_DEAD_CHECKOUTS: usize = 64;

impl Store {
    /// Creates the pools without connecting: the node starts even while PostgreSQL is down.
    ///
    /// Of `pool_size` connections, `persist_pool_size` (at least one, at most half) are the
    /// persisters' own, so that a burst of reads never makes a persister wait for a connection.
    /// Those plan the persister's prepared statement once rather than for every batch
    /// (`plan_cache_mode = force_generic_plan`): left to choose, PostgreSQL kept planning it for
    /// each batch's values, which at a few messages a batch cost as much as running it, and its
    /// plan does not depend on them (every row comes out of `unnest`, every lookup is by key).
    /// Every other statement keeps PostgreSQL's own choice.
    pub fn new(database_url: &str, pool_size: u32, persist_pool_size: u32) -> Store {
        let pool_size = pool_size.max(3);
        let persist_pool_size = persist_pool_size.clamp(1, pool_size / 2);
        Store {
            connections: Connections::new(database_url, pool_size - persist_pool_size, None),
            persisting: Connections::new(
                database_url,
                persist_pool_size,
                Some("SET plan_cache_mode = force_generic_plan"),
            ),
            batches: Arc::default(),
        }
    }

    /// Runs `work` with a pooled connection on the blocking pool.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        self.connections.run(work).await
    }

    /// Applies pending migrations, holding an advisory lock so concurrent nodes take turns.
    ///
    /// The lock is tried, not waited for: a node waiting inside `pg_advisory_lock` keeps a
    /// statement open that a `CREATE INDEX CONCURRENTLY` of the node holding the lock must wait
    /// out, while that node holds the lock: a deadlock, which PostgreSQL breaks by failing one
    /// of them.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            #[derive(diesel::QueryableByName)]
            struct Locked {
                #[diesel(sql_type = diesel::sql_types::Bool)]
                locked: bool,
            }
            while !diesel::sql_query(format!(
                "SELECT pg_try_advisory_lock({MIGRATION_LOCK_KEY}) AS locked"
            ))
            .get_result::<Locked>(conn)?
            .locked
            {
                std::thread::sleep(MIGRATION_LOCK_RETRY);
            }
            let applied = conn
                .run_pending_migrations(MIGRATIONS)
                .map(|versions| versions.len())
                .map_err(|e| StoreError::Migration(e.to_string()));
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
                .execute(conn)?;
            let applied = applied?;
            if applied > 0 {
                tracing::info!(applied, "database migrations applied");
            }
            Ok(())
        })
        .await
    }

    /// How many connections each pool holds, for the metrics: the requests' pool, then the
    /// persisters'.
    pub fn pool_states(&self) -> [(&'static str, PoolState); 2] {
        [
            ("requests", self.connections.state()),
            ("persist", self.persisting.state()),
        ]
    }

    /// Checks that PostgreSQL answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            diesel::sql_query("SELECT 1").execute(conn)?;
            Ok(())
        })
        .await
    }
}

impl Connections {
    fn new(database_url: &str, size: u32, setup: Option<&'static str>) -> Connections {
        let generation = Arc::new(AtomicU64::new(0));
        let manager = Manager {
            inner: ConnectionManager::<PgConnection>::new(database_url),
            generation: generation.clone(),
            setup,
        };
        let pool = Pool::builder()
            .max_size(size.max(1))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(3))
            .test_on_check_out(false)
            .build_unchecked(manager);
        Connections { pool, generation }
    }

    fn state(&self) -> PoolState {
        let state = self.pool.state();
        PoolState {
            open: state.connections,
            idle: state.idle_connections,
            max: self.pool.max_size(),
        }
    }

    /// Runs `work` with a pooled connection on the blocking pool.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let generation = self.generation.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut conn = checkout(&pool, &generation)?;
            let result = work(&mut conn.conn);
            if result.is_err() && conn.conn.ping().is_err() {
                conn.dead = true;
                generation.fetch_add(1, Ordering::AcqRel);
            }
            result
        })
        .await?
    }
}

/// A connection from the pool, tested first if a connection died since it was last known alive.
fn checkout(
    pool: &Pool<Manager>,
    generation: &AtomicU64,
) -> Result<PooledConnection<Manager>, StoreError> {
    for _ in 0..MAX_DEAD_CHECKOUTS {
        let mut conn = pool.get()?;
        let current = generation.load(Ordering::Acquire);
        if conn.generation == current {
            return Ok(conn);
        }
        if conn.conn.ping().is_ok() {
            conn.generation = current;
            return Ok(conn);
        }
        conn.dead = true;
    }
    Ok(pool.get()?)
}
