//! Nodes starting together on an empty database: one migrates it while the others wait, and the
//! indexes built CONCURRENTLY end up valid, without PostgreSQL having to break a deadlock.

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use e2e_tests::TestEnv;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

fn count(url: &str, query: &str) -> anyhow::Result<i64> {
    let mut conn = PgConnection::establish(url)?;
    Ok(diesel::sql_query(query)
        .get_result::<Count>(&mut conn)?
        .count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_together_migrate_once_and_build_valid_indexes() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let (a, b, c) = tokio::join!(
        env.start_node("migrate-a"),
        env.start_node("migrate-b"),
        env.start_node("migrate-c")
    );
    let nodes = [a?, b?, c?];
    let valid = count(
        &env.db.url,
        "SELECT count(*) AS count FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relname IN ('messages_words', 'messages_by_time') AND i.indisvalid",
    )?;
    assert_eq!(valid, 2, "the search indexes are built and valid");
    let deadlocks = count(
        &env.db.url,
        &format!(
            "SELECT deadlocks AS count FROM pg_stat_database WHERE datname = '{}'",
            env.db.name
        ),
    )?;
    assert_eq!(
        deadlocks, 0,
        "PostgreSQL broke deadlocks while the nodes migrated"
    );
    for node in nodes {
        node.stop().await?;
    }
    Ok(())
}
