//! What a client that does not read costs a node: its outbox is bounded in bytes, replies and
//! deliveries alike, and overflowing it ends the connection (close 1008); error replies quote
//! at most a short excerpt of the frame they answer.

use chat_protocol::{ClientFrame, ErrorCode, RoomId, ServerFrame};
use e2e_tests::process::ProcessNode;
use e2e_tests::{Api, TestEnv};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const MIB: u64 = 1024 * 1024;
/// Sockets of one account that send and never read.
const HOGS: usize = 100;
/// Messages of 3,900 bytes in the room they resume again and again.
const HISTORY: usize = 12;
/// What those sockets may make the node's memory grow by, all of them together.
const MAX_GROWTH: u64 = 100 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_quote_at_most_an_excerpt_of_the_frame() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let node = env.start_node("excerpts").await?;
    let mut client = node.user("ada").await?;
    let escapes = "\\u0001".repeat(2_600);
    for frame in [
        format!(r#"{{"type":"{escapes}"}}"#),
        format!(r#"{{"type":"join","room_id":"{escapes}"}}"#),
        format!(r#"{{"type":"{}"}}"#, "x".repeat(16_000)),
    ] {
        client.send_raw(&frame).await?;
        let (code, message) = client
            .recv_until(|frame| match frame {
                ServerFrame::Error { code, message, .. } => Some((*code, message.clone())),
                _ => None,
            })
            .await?;
        assert!(matches!(code, ErrorCode::UnknownType | ErrorCode::BadFrame));
        assert!(
            message.len() < 1_000,
            "a {}-byte frame got a {}-byte error message",
            frame.len(),
            message.len()
        );
    }
    node.stop().await?;
    Ok(())
}

/// The node's resident memory, from `/proc`.
fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// Samples the node's memory every 20 ms and keeps the peak, until dropped.
struct PeakMemory {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakMemory {
    fn watch(pid: u32) -> PeakMemory {
        let peak = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let peak = peak.clone();
            async move {
                while let Ok(now) = resident_bytes(pid) {
                    peak.fetch_max(now, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        PeakMemory { peak, task }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakMemory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A WebSocket of `token`'s session whose socket takes in at most a few KiB: once that is full,
/// everything the node sends it waits on the node.
async fn socket_that_never_reads(
    addr: SocketAddr,
    token: &str,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let tcp = tokio::net::TcpSocket::new_v4()?;
    tcp.set_recv_buffer_size(4 * 1024)?;
    let stream = tcp.connect(addr).await?;
    let mut request = format!("ws://{addr}/ws").into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(socket)
}

/// Opens [`HOGS`] sockets that ask again and again for a room's whole history (each answer
/// about 50 KB) and read nothing, until the node has closed every one of them. Fails if the
/// node's memory grows by more than [`MAX_GROWTH`] over `baseline` meanwhile. Returns the peak.
async fn flood(node: &ProcessNode, api: &Api, room: RoomId, baseline: u64) -> anyhow::Result<u64> {
    let token = api.token().unwrap_or_default().to_owned();
    let mut sockets = Vec::with_capacity(HOGS);
    for _ in 0..HOGS {
        sockets.push(Some(socket_that_never_reads(node.addr, &token).await?));
    }
    let memory = PeakMemory::watch(node.pid());
    let closed_before = api.metric(TOO_SLOW).await?;
    let resume = serde_json::to_string(&ClientFrame::Join {
        room_id: room,
        after: Some(chat_protocol::Seq(0)),
    })?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let closed = api.metric(TOO_SLOW).await? - closed_before;
        let growth = memory.peak().saturating_sub(baseline);
        anyhow::ensure!(
            growth < MAX_GROWTH,
            "{HOGS} sockets that never read grew the node by {} MiB ({closed} closed)",
            growth / MIB
        );
        if closed >= HOGS as f64 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {closed} of {HOGS} sockets that never read were closed"
        );
        for slot in sockets.iter_mut() {
            let Some(socket) = slot else { continue };
            // A socket the node has let go of refuses the write: it needs nothing more.
            if socket.send(Message::text(resume.clone())).await.is_err() {
                *slot = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each was closed, whatever it had been sent: reading at last, it finds what the socket
    // buffered, then 1008 (if the close frame fitted) or the end of the connection.
    for socket in sockets.iter_mut().flatten() {
        let close = tokio::time::timeout(e2e_tests::DEADLINE, async {
            while let Some(message) = socket.next().await {
                match message {
                    Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
            None
        })
        .await?;
        anyhow::ensure!(matches!(close, None | Some(1008)), "closed with {close:?}");
    }
    Ok(memory.peak())
}

const TOO_SLOW: &str = r#"chat_disconnects_total{reason="too_slow"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sockets_that_never_read_are_closed_and_hold_bounded_memory() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Each socket may hold its outbox, the WebSocket layer's write buffer and the resume it is
    // reading, and the allocator's share: at the node's defaults, 100 of them stay under the
    // limit.
    let config = env.config("hoarded");
    let node = ProcessNode::start(&config).await?;
    let base = format!("http://{}", node.addr);

    // A room whose whole history is about 50 KB of frames: under what one resume may queue
    // (half of the default 128 KiB outbox), so every `join` from 0 is answered in full.
    let mut writer = node.user("writer").await?;
    let (room, _) = writer.join("archive").await?;
    let body = "h".repeat(3_900);
    for n in 0..HISTORY {
        writer.send_message(room, &format!("m{n}"), &body).await?;
    }
    let mut stored = 0;
    while stored < HISTORY {
        writer
            .recv_until(|frame| matches!(frame, ServerFrame::Stored { .. }).then_some(()))
            .await?;
        stored += 1;
    }
    let hog = Api::new(&base)
        .with_metrics(&format!("http://{}/metrics", node.metrics_addr))
        .sign_in("hog")
        .await?;
    let joined = hog.post_empty(&format!("/api/rooms/{room}/join")).await?;
    anyhow::ensure!(joined.status == 200, "{}", joined.body);

    let baseline = resident_bytes(node.pid())?;
    let first_peak = flood(&node, &hog, room, baseline).await?;
    // Closed connections give their memory back to the node: a second wave like the first
    // reuses it instead of adding to it.
    let second_peak = flood(&node, &hog, room, baseline).await?;
    assert!(
        second_peak < first_peak + 32 * MIB,
        "the node grew from {} MiB to {} MiB over a second wave of the same clients",
        first_peak / MIB,
        second_peak / MIB
    );
    Ok(())
}
