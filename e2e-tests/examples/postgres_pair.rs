//! A PostgreSQL primary with a synchronous standby (`e2e_tests::postgres_pair`), kept until
//! this process is interrupted (Ctrl-C or SIGTERM), for measuring what synchronous replication
//! costs: `cargo xtask bench --database-url <the URL printed>` runs the nodes against it.
//!
//! `cargo run -p e2e-tests --example postgres_pair [database]` (root: the clusters run as
//! `postgres`). Prints the multi-host URL of `database` (default `chat_bench`), then waits.

use e2e_tests::postgres_pair::PostgresPair;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let database = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "chat_bench".to_owned());
    let pair = PostgresPair::start(&database).await?;
    println!("{}", pair.database_url(&database));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    // Dropping the pair stops both clusters and removes their files.
    drop(pair);
    Ok(())
}
