//! The shipped `rabbitmq/definitions.json` on a broker of its own: no `guest`, and a node that
//! runs as the `chat` user, whose rights cover `chat.*` names only, works. The same for
//! `rabbitmq/definitions.quorum.json` and a node with `CHAT_QUEUE_TYPE=quorum`.

use e2e_tests::{eventually, TestEnv, TestNode};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const DEFINITIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../rabbitmq/definitions.json");
const QUORUM_DEFINITIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../rabbitmq/definitions.quorum.json"
);

/// A RabbitMQ node of its own (name, port, data and logs), booted with the shipped definitions
/// and nothing else; stopped and removed when dropped.
struct PrivateBroker {
    node: String,
    port: u16,
    dir: PathBuf,
    /// The `chat` user's password in the definitions it loaded.
    chat_password: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PrivateBroker {
    fn start(definitions: &str) -> anyhow::Result<PrivateBroker> {
        PrivateBroker::start_with(definitions, "chat")
    }

    fn start_with(definitions: &str, chat_password: &str) -> anyhow::Result<PrivateBroker> {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let dir = std::env::temp_dir().join(format!("chat-rabbit-{id}"));
        std::fs::create_dir_all(dir.join("mnesia"))?;
        std::fs::create_dir_all(dir.join("log"))?;
        std::fs::copy(definitions, dir.join("definitions.json"))?;
        std::fs::write(dir.join("plugins"), "[].\n")?;
        let port = free_port()?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "load_definitions = {}\nlisteners.tcp.default = {port}\n",
                dir.join("definitions.json").display()
            ),
        )?;
        // The server scripts run it as the `rabbitmq` user when started by root.
        if std::env::var("USER")
            .map(|user| user == "root")
            .unwrap_or(true)
        {
            Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(&dir)
                .status()?;
        }
        let broker = PrivateBroker {
            node: format!("chat-test-{id}@localhost"),
            port,
            dir,
            chat_password: chat_password.to_owned(),
        };
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &broker.node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port()?.to_string())
            .env("RABBITMQ_MNESIA_BASE", broker.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", broker.dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", broker.dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", broker.dir.join("rabbitmq.conf"))
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(started.success(), "rabbitmq-server did not start");
        Ok(broker)
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", self.port)
    }

    /// Waits until the `chat` user can connect (the definitions are loaded by then).
    async fn wait_up(&self) -> anyhow::Result<()> {
        let url = self.url("chat", &self.chat_password);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(connection) = Connection::connect(&url, ConnectionProperties::default()).await
            {
                let _ = connection.close(200, "up".into()).await;
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the private broker did not come up"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_run_as_the_chat_user_of_the_shipped_definitions_and_guest_is_gone(
) -> anyhow::Result<()> {
    let broker = PrivateBroker::start(DEFINITIONS)?;
    broker.wait_up().await?;

    let guest = Connection::connect(
        &broker.url("guest", "guest"),
        ConnectionProperties::default(),
    )
    .await;
    assert!(guest.is_err(), "guest can still connect");

    // The rights end at the prefix.
    let chat =
        Connection::connect(&broker.url("chat", "chat"), ConnectionProperties::default()).await?;
    let channel = chat.create_channel().await?;
    let foreign = channel
        .queue_declare(
            "other.queue".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(foreign.is_err(), "chat declared a queue outside its prefix");
    let _ = chat.close(200, "done".into()).await;

    // A node with the shipped prefix and shard count, as `chat`: sends are stored and delivered.
    let env = TestEnv::new().await?;
    let mut config = env.config("as-chat");
    config.amqp_url = chat_backend::config::Secret(broker.url("chat", "chat"));
    config.amqp_prefix = "chat".into();
    config.ingest_shards = 2;
    let node = TestNode::start(config).await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("permissions").await?;
    ada.send_message(room, "m1", "through chat.*").await?;
    let message = ada.next_message(room).await?;
    assert_eq!(message.body, "through chat.*");
    let stored = eventually("the message stored", || async {
        let rows = e2e_tests::checks::stored_messages(&env.db, room)
            .await
            .ok()?;
        (rows.len() == 1).then_some(rows)
    })
    .await?;
    assert_eq!(stored[0].1, "m1");
    node.stop().await?;
    Ok(())
}

/// The quorum definitions declare what a node with `CHAT_QUEUE_TYPE=quorum` declares, delivery
/// limit included: the node starts (an inequivalent argument would stop it), and sends are
/// stored once and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_node_runs_on_a_broker_of_the_shipped_quorum_definitions() -> anyhow::Result<()> {
    let broker = PrivateBroker::start(QUORUM_DEFINITIONS)?;
    broker.wait_up().await?;

    let env = TestEnv::new().await?;
    let mut config = env.config("quorum");
    config.amqp_url = chat_backend::config::Secret(broker.url("chat", "chat"));
    config.amqp_prefix = "chat".into();
    config.ingest_shards = 2;
    config.queue_type = chat_backend::config::QueueType::Quorum;
    let node = TestNode::start(config).await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("replicated").await?;
    for n in 1..=3 {
        ada.send_message(room, &format!("q{n}"), &format!("quorum {n}"))
            .await?;
    }
    for n in 1..=3 {
        let message = ada.next_message(room).await?;
        assert_eq!(message.body, format!("quorum {n}"));
    }
    let stored = eventually("three messages stored", || async {
        let rows = e2e_tests::checks::stored_messages(&env.db, room)
            .await
            .ok()?;
        (rows.len() == 3).then_some(rows)
    })
    .await?;
    let ids: Vec<&str> = stored.iter().map(|row| row.1.as_str()).collect();
    assert_eq!(ids, ["q1", "q2", "q3"]);

    // The ingest queues on the broker are the quorum queues of the definitions.
    let chat =
        Connection::connect(&broker.url("chat", "chat"), ConnectionProperties::default()).await?;
    let channel = chat.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    let passive = channel
        .queue_declare(
            "chat.ingest.0".into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await;
    assert!(passive.is_ok(), "chat.ingest.0 is missing: {passive:?}");
    let _ = chat.close(200, "done".into()).await;
    node.stop().await?;
    Ok(())
}

/// The compose brokers' definitions: `docker/rabbitmq-definitions.sh` puts the password of
/// `RABBITMQ_CHAT_PASSWORD` in place of the shipped hash, so `chat` opens the broker with it and
/// no longer with `chat`; a password that cannot go into AMQP_URL is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_brokers_take_the_chat_password_from_the_environment() -> anyhow::Result<()> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker/rabbitmq-definitions.sh"
    );
    let dir = std::env::temp_dir().join(format!(
        "chat-definitions-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let written = dir.join("definitions.json");
    let write = |password: &str| {
        Command::new("sh")
            .arg(script)
            .arg(QUORUM_DEFINITIONS)
            .arg(&written)
            .env("CHAT_RABBITMQ_PASSWORD", password)
            .output()
    };
    let refused = write("not a url: password")?;
    anyhow::ensure!(
        !refused.status.success(),
        "a password with spaces went through"
    );
    let made = write("s3cret-Hex_42")?;
    anyhow::ensure!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let definitions = written.to_string_lossy().into_owned();

    let broker = PrivateBroker::start_with(&definitions, "s3cret-Hex_42")?;
    broker.wait_up().await?;
    let _ = std::fs::remove_dir_all(&dir);
    let shipped =
        Connection::connect(&broker.url("chat", "chat"), ConnectionProperties::default()).await;
    assert!(
        shipped.is_err(),
        "the shipped password still opens the broker"
    );

    let env = TestEnv::new().await?;
    let mut config = env.config("compose-password");
    config.amqp_url = chat_backend::config::Secret(broker.url("chat", "s3cret-Hex_42"));
    config.amqp_prefix = "chat".into();
    config.ingest_shards = 2;
    config.queue_type = chat_backend::config::QueueType::Quorum;
    let node = TestNode::start(config).await?;
    let mut ada = node.user("ada").await?;
    let (room, _) = ada.join("password").await?;
    ada.send_message(room, "c1", "with the deployment's password")
        .await?;
    assert_eq!(
        ada.next_message(room).await?.body,
        "with the deployment's password"
    );
    drop(ada);
    node.stop().await
}
