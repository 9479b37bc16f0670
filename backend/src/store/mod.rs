//! The store: the only module that speaks SQL.
//!
//! Diesel and r2d2 block, so every call goes through [`Store::run`], which runs it on tokio's
//! blocking pool with the caller's tracing span.

mod accounts;
mod messages;
mod persist;
mod rooms;
pub mod schema;

pub use accounts::{NewUser, SessionUser, UserRow};
pub use messages::{ChangeOutcome, ReadState, StoredRow};
pub use persist::{MessageOutcome, SeqCounters};
pub use rooms::RoomRow;

use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel::RunQueryDsl;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::time::Duration;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Key of the advisory lock that serialises migrations when several nodes start together.
const MIGRATION_LOCK_KEY: i64 = 0x0063_6861_746d_6967; // "chatmig" in ASCII

pub type DbConnection = PooledConnection<ConnectionManager<PgConnection>>;

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
}

impl StoreError {
    /// True when the failure says nothing about the data: the database was unreachable, the
    /// connection broke, or a transaction lost a race. Such work is retried as it is.
    pub fn is_transient(&self) -> bool {
        use diesel::result::{DatabaseErrorKind as Kind, Error};
        match self {
            StoreError::Unavailable(_) | StoreError::Task(_) | StoreError::Check(_) => true,
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
#[derive(Clone)]
pub struct Store {
    pool: Pool<ConnectionManager<PgConnection>>,
}

impl Store {
    /// Creates the pool without connecting: the node starts even while PostgreSQL is down.
    pub fn new(database_url: &str, pool_size: u32) -> Store {
        let manager = ConnectionManager::<PgConnection>::new(database_url);
        let pool = Pool::builder()
            .max_size(pool_size.max(2))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(3))
            // A connection broken by an outage is found and replaced at checkout, not at first use.
            .test_on_check_out(true)
            .build_unchecked(manager);
        Store { pool }
    }

    /// Runs `work` with a pooled connection on the blocking pool.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut conn = pool.get()?;
            work(&mut conn)
        })
        .await?
    }

    /// Applies pending migrations, holding an advisory lock so concurrent nodes take turns.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
                .execute(conn)?;
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

    /// Checks that PostgreSQL answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            diesel::sql_query("SELECT 1").execute(conn)?;
            Ok(())
        })
        .await
    }
}
