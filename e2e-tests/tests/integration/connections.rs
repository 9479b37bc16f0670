//! Connection limits and HTTP deadlines: what one user, one address or a flood of silent
//! connections can hold of a node, and that everybody else is still served meanwhile.

use e2e_tests::api::test_password;
use e2e_tests::process::ProcessNode;
use e2e_tests::{eventually, Api, TestEnv, TestNode, WsClient};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Error as WsError;

/// Attackers connect from 127.0.0.1; everybody else from this other loopback address.
const OTHER_CLIENT: [u8; 4] = [127, 0, 0, 2];

/// How a WebSocket upgrade ended.
enum Upgrade {
    Open(Box<WsClient>),
    /// The status and error code of a refusal.
    Refused(u16, String),
}

impl Upgrade {
    fn refusal(&self) -> Option<(u16, &str)> {
        match self {
            Upgrade::Open(_) => None,
            Upgrade::Refused(status, code) => Some((*status, code.as_str())),
        }
    }
}

/// Opens a WebSocket as `api`'s user, through a proxy that forwards for `forwarded_for` when
/// given.
async fn open(node: &TestNode, api: &Api, forwarded_for: Option<&str>) -> anyhow::Result<Upgrade> {
    let headers: Vec<(&'static str, &str)> = forwarded_for
        .map(|ip| ("x-forwarded-for", ip))
        .into_iter()
        .collect();
    let error = match WsClient::connect_with_headers(&node.ws_url(), api.clone(), &headers).await {
        Ok(client) => return Ok(Upgrade::Open(Box::new(client))),
        Err(error) => error,
    };
    let refused = error
        .chain()
        .find_map(|cause| match cause.downcast_ref::<WsError>() {
            Some(WsError::Http(response)) => Some(response),
            _ => None,
        });
    let Some(response) = refused else {
        return Err(error);
    };
    let body: serde_json::Value =
        serde_json::from_slice(response.body().as_deref().unwrap_or_default())?;
    Ok(Upgrade::Refused(
        response.status().as_u16(),
        body["code"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Opens `count` WebSockets as `api`'s user, failing unless every one opens.
async fn open_all(
    node: &TestNode,
    api: &Api,
    forwarded_for: Option<&str>,
    count: usize,
) -> anyhow::Result<Vec<WsClient>> {
    let mut clients = Vec::new();
    for _ in 0..count {
        match open(node, api, forwarded_for).await? {
            Upgrade::Open(client) => clients.push(*client),
            Upgrade::Refused(status, code) => anyhow::bail!("refused: {status} {code}"),
        }
    }
    Ok(clients)
}

/// A REST client of the node at `addr` whose connections come from `source`.
fn client_from(source: [u8; 4]) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(IpAddr::from(source))
        .timeout(Duration::from_secs(5))
        .build()?)
}

/// `/healthz` answers, and a new user registers and logs in, for a client at `source`.
async fn served(addr: SocketAddr, source: [u8; 4], name: &str) -> anyhow::Result<()> {
    let http = client_from(source)?;
    let health = http.get(format!("http://{addr}/healthz")).send().await?;
    anyhow::ensure!(health.status() == 200, "healthz: {}", health.status());
    let account = json!({"username": name, "password": test_password(name)});
    for path in ["/api/register", "/api/login"] {
        let answer = http
            .post(format!("http://{addr}{path}"))
            .json(&account)
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "{path}: {}", answer.status());
    }
    Ok(())
}

/// A TCP connection to `addr` from 127.0.0.1 that sends nothing.
async fn silent_connection(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    Ok(TcpStream::connect(addr).await?)
}

/// Whether the node closes `connection` within `within` (end of stream or reset).
async fn closed_within(connection: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, connection.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An answer (a timeout status, say) may come before the end.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_holds_a_bounded_number_of_websockets_freed_when_they_close() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let mut config = env.config("per-user");
    config.websockets_per_user = 3;
    let node = TestNode::start(config).await?;
    let ada = node.sign_in("ada").await?;
    let bob = node.sign_in("bob").await?;

    let mut adas = open_all(&node, &ada, None, 3).await?;
    let refused = open(&node, &ada, None).await?;
    assert_eq!(refused.refusal(), Some((429, "too_many_connections")));
    // Another user is not held to ada's count.
    assert!(open(&node, &bob, None).await?.refusal().is_none());

    // A socket closed frees its place once its session has ended.
    drop(adas.pop());
    let reopened = eventually("ada's freed place", || async {
        match open(&node, &ada, None).await {
            Ok(Upgrade::Open(client)) => Some(client),
            _ => None,
        }
    })
    .await?;
    drop(reopened);
    drop(adas);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_behind_a_trusted_proxy_holds_a_bounded_number_of_websockets(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("per-ip");
    config.websockets_per_ip = 2;
    config.trusted_proxies = "127.0.0.1".parse().map_err(anyhow::Error::msg)?;
    let node = TestNode::start(config).await?;
    let (ada, bob, cy) = (
        node.sign_in("ada").await?,
        node.sign_in("bob").await?,
        node.sign_in("cy").await?,
    );

    let here = Some("203.0.113.7");
    let held = [
        open_all(&node, &ada, here, 1).await?,
        open_all(&node, &bob, here, 1).await?,
    ];
    let refused = open(&node, &cy, here).await?;
    assert_eq!(refused.refusal(), Some((429, "too_many_connections")));
    // The same user from another address behind the proxy is not refused.
    assert!(open(&node, &cy, Some("203.0.113.8"))
        .await?
        .refusal()
        .is_none());
    // Closed by the client, as the other tests do: a socket nobody reads never answers the
    // node's close and would hold its drain to the end.
    drop(held);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_full_of_websockets_answers_upgrades_503_and_still_serves_requests(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("ws-full");
    config.max_websockets = 2;
    let node = TestNode::start(config).await?;
    let (ada, bob) = (node.sign_in("ada").await?, node.sign_in("bob").await?);
    let held = open_all(&node, &ada, None, 2).await?;
    let refused = open(&node, &bob, None).await?;
    assert_eq!(refused.refusal(), Some((503, "node_full")));
    assert_eq!(bob.get("/api/me").await?.status, 200);
    drop(held);
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_stop_at_its_limit_and_others_are_served(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("idle-flood");
    config.connections_per_ip = 100;
    let node = TestNode::start(config).await?;

    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(silent_connection(node.addr).await?);
    }
    // Past the limit, connections from that address are closed at once.
    for _ in 0..10 {
        let mut extra = silent_connection(node.addr).await?;
        assert!(
            closed_within(&mut extra, Duration::from_secs(2)).await,
            "a connection past the address's limit stayed open"
        );
    }
    served(node.addr, OTHER_CLIENT, "other").await?;
    // The flood is still held (it is within its limit and its deadline).
    assert!(!closed_within(&mut flood[0], Duration::from_millis(200)).await);

    drop(flood);
    let http = reqwest::Client::new();
    eventually("the address served again", || async {
        let answer = http
            .get(format!("{}/healthz", node.http_url()))
            .send()
            .await;
        answer.ok().filter(|answer| answer.status() == 200)
    })
    .await?;
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_sent_headers_and_silent_connections_are_closed_within_the_header_timeout(
) -> anyhow::Result<()> {
    const HEADER_TIMEOUT: Duration = Duration::from_millis(1_500);
    let env = TestEnv::new().await?;
    let mut config = env.config("slowloris");
    config.http_header_timeout_ms = HEADER_TIMEOUT.as_millis() as u64;
    let node = TestNode::start(config).await?;

    let mut attackers = Vec::new();
    for index in 0..2_100 {
        let mut connection = silent_connection(node.addr).await?;
        // 2,000 send half a request; 100 send nothing at all.
        if index < 2_000 {
            connection
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: chat.example\r\nX-Waiting: ")
                .await?;
        }
        attackers.push(connection);
    }
    let opened = Instant::now();
    // While they are open, another client is served.
    served(node.addr, OTHER_CLIENT, "patient").await?;

    // Each is closed within the timeout: the half-sent ones by the header-read timeout from
    // their first byte, the silent ones by the deadline for a first byte.
    let slack = Duration::from_secs(2);
    let checks = attackers.into_iter().map(|mut connection| {
        let left = (HEADER_TIMEOUT + slack).saturating_sub(opened.elapsed());
        tokio::spawn(async move { closed_within(&mut connection, left).await })
    });
    let mut still_open = 0;
    for check in futures::future::join_all(checks).await {
        if !check? {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "connections still open past the header timeout"
    );
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_silent_between_requests_is_closed_after_the_idle_timeout(
) -> anyhow::Result<()> {
    const IDLE_TIMEOUT: Duration = Duration::from_millis(1_500);
    let env = TestEnv::new().await?;
    let mut config = env.config("keep-alive");
    config.http_idle_timeout_ms = IDLE_TIMEOUT.as_millis() as u64;
    let node = TestNode::start(config).await?;

    // A served request, then silence; an upgrade without a session (401), then silence.
    let requests: [&[u8]; 2] = [
        b"GET /healthz HTTP/1.1\r\nHost: chat.example\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ];
    for request in requests {
        let mut connection = silent_connection(node.addr).await?;
        connection.write_all(request).await?;
        let mut head = [0u8; 12];
        connection.read_exact(&mut head).await?;
        let status = String::from_utf8_lossy(&head[9..12]).into_owned();
        assert!(status == "200" || status == "401", "{status}");
        let answered = Instant::now();
        assert!(
            closed_within(&mut connection, IDLE_TIMEOUT + Duration::from_secs(2)).await,
            "a connection answered {status} stayed open past the idle timeout"
        );
        // A kept-alive connection gets its full idle time.
        if status == "200" {
            assert!(
                answered.elapsed() >= IDLE_TIMEOUT - Duration::from_millis(300),
                "closed before the idle timeout ({:?})",
                answered.elapsed()
            );
        }
    }
    node.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_connections_before_its_open_file_limit_and_keeps_working(
) -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let mut config = env.config("fd-limit");
    // The held connections never send a byte: they must not time out while the extra ones are
    // tried, however slowly a loaded machine runs the loop.
    config.http_header_timeout_ms = 120_000;
    // 1,100 descriptors, 1,000 of them kept for the node's own use: 100 client connections.
    let node = ProcessNode::start_limited(&config, Some(1_100)).await?;

    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(TcpStream::connect(node.addr).await?);
    }
    for _ in 0..10 {
        let mut extra = TcpStream::connect(node.addr).await?;
        assert!(
            closed_within(&mut extra, Duration::from_secs(2)).await,
            "a connection past the node's limit stayed open"
        );
    }
    // The operator's listener is not counted: the node reports itself ready, PostgreSQL and
    // RabbitMQ included.
    let ready = reqwest::get(format!("http://{}/readyz", node.metrics_addr)).await?;
    assert_eq!(ready.status(), 200);

    drop(held);
    let api = Api::new(&format!("http://{}", node.addr));
    let ada = eventually("a place on the node", || async {
        api.sign_in("ada").await.ok()
    })
    .await?;
    let mut client = WsClient::connect_as(&format!("ws://{}/ws", node.addr), ada).await?;
    let (room, _) = client.join("after-the-flood").await?;
    client.send_message(room, "m1", "still here").await?;
    let message = client.next_message(room).await?;
    assert_eq!(message.body, "still here");
    Ok(())
}
