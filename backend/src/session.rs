//! One WebSocket connection: reads client frames, answers them, and writes what the hub queues.
//!
//! The reader and the writer are separate tasks joined by the connection's outbox (bounded in
//! bytes, `connection`), so a slow socket never blocks the node queue consumer, and replies
//! keep their order relative to deliveries. The writer flushes once per burst of queued frames,
//! not once per frame. The reader pings a silent peer and drops one that stays silent.

use crate::app::App;
use crate::auth::Identity;
use crate::bus::IngestAnswer;
use crate::connection::{Ending, Liveness, Outbox, OutboxReceiver, Outgoing, Silence};
use crate::delivery::hub::{self, ConnId};
use crate::delivery::Joining;
use crate::directory::Access;
use crate::http::Socket;
use crate::membership::{Confirmation, Trust};
use crate::presence::PresenceEvent;
use crate::rate_limit::{FrameWrite, RetryAfter};
use crate::store::ChangeOutcome;
use crate::watch;
use chat_protocol::api::Role;
use chat_protocol::bus::{Delivery, IngestMessage, Origin};
use chat_protocol::{
    ClientFrame, ClientMsgId, ErrorCode, FrameError, PresenceStatus, RoomId, Seq, ServerFrame,
    UserId,
};
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Close code sent when the node shuts down (RFC 6455 "going away", 1001).
pub const CLOSE_GOING_AWAY: CloseCode = CloseCode::Away;
/// How long the close frame may take to leave before the connection is dropped without it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames written before a flush is forced, even if more are queued.
const MAX_FRAMES_PER_FLUSH: usize = 256;
/// Least time between two typing indicators forwarded for one room and connection.
const TYPING_INTERVAL: Duration = Duration::from_secs(2);

struct Session {
    app: Arc<App>,
    conn: ConnId,
    user_id: UserId,
    /// The display name at connect time, which messages sent on this connection carry.
    name: String,
    peer: Option<IpAddr>,
    /// Rooms this connection follows, with the user's last confirmed membership of each.
    rooms: HashMap<RoomId, Arc<Confirmation>>,
    /// When a typing indicator was last forwarded, per room.
    typing_sent: HashMap<RoomId, Instant>,
    /// The connection's outbox, which replies share with deliveries.
    replies: Outbox,
}

/// Serves one upgraded WebSocket of a signed-in user until either side closes it or the node
/// stops. Everything the connection logs, its writer's lines included, is in its `connection`
/// span: the connection's number, its user and the node.
pub async fn serve(socket: Socket, app: Arc<App>, identity: Identity, peer: Option<IpAddr>) {
    let conn = app.next_conn_id();
    let span = tracing::info_span!(
        "connection",
        conn,
        user = %identity.user.user_id,
        node = %app.node_id()
    );
    serve_connection(conn, socket, app, identity, peer)
        .instrument(span)
        .await;
}

async fn serve_connection(
    conn: ConnId,
    socket: Socket,
    app: Arc<App>,
    identity: Identity,
    peer: Option<IpAddr>,
) {
    let kick = app.shutdown.child_token();
    let (outbox, frames_rx) = Outbox::new(
        app.config.ws_outbox_budget(),
        kick.clone(),
        identity.user.user_id,
        identity.session_key(),
    );
    app.hub.register(conn, outbox.clone());
    app.metrics.connections.inc();

    let (sink, mut stream) = socket.split();
    // The reader tells the writer it is done, with the close frame it wants sent if any.
    let (end, ended) = oneshot::channel();
    let writer = tokio::spawn(
        write_frames(sink, frames_rx, kick.clone(), ended, app.shutdown.clone()).in_current_span(),
    );

    let mut session = Session {
        app: app.clone(),
        conn,
        user_id: identity.user.user_id,
        name: identity.user.display_name,
        peer,
        rooms: HashMap::new(),
        typing_sent: HashMap::new(),
        replies: outbox,
    };
    // Before `welcome`: activity in the user's rooms is reported from then on.
    if let Some(load) = app.watching.connected(session.user_id) {
        watch::load(&app, load).await;
    }
    session.reply(&ServerFrame::Welcome {
        node_id: app.node_id().to_owned(),
        user_id: session.user_id,
        name: session.name.clone(),
    });
    session.set_presence(PresenceStatus::Online).await;
    let mut closing = None;
    // Made once for the connection, not for every frame: each makes and drops a waiter on the
    // token.
    let kicked = kick.cancelled();
    tokio::pin!(kicked);
    let (ping_after, silence_timeout) = app.config.ws_liveness();
    let mut peer = Liveness::new(Instant::now());
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + ping_after, ping_after);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = &mut kicked => break,
            _ = check.tick() => {
                match peer.check(Instant::now(), ping_after, silence_timeout) {
                    Silence::Fine => {}
                    Silence::Ping => {
                        session.replies.ping();
                    }
                    Silence::Dead => {
                        session.replies.end(Ending::Silent);
                        break;
                    }
                }
                continue;
            }
        };
        peer.heard(Instant::now());
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                tracing::debug!(conn, %error, "WebSocket read failed");
                closing = refusal(&error);
                break;
            }
            None => break,
        };
        match message {
            Message::Text(text) => session.handle_text(&text).await,
            Message::Binary(_) => session.reply_error(&FrameError::new(
                ErrorCode::BadJson,
                "frames are JSON text, not binary",
            )),
            Message::Close(_) => break,
            // Pings are answered by the WebSocket layer; pongs need nothing.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    session.leave_all().await;
    watch::settle_rooms(&app, app.watching.disconnected(session.user_id)).await;
    session.set_presence(PresenceStatus::Offline).await;
    app.hub.unregister(conn);
    app.metrics.connections.dec();
    if let Some(ending) = session.replies.ending() {
        if ending == Ending::TooSlow {
            app.metrics.frames_dropped_slow_client.inc();
        }
        app.metrics
            .disconnects
            .with_label_values(&[ending.as_str()])
            .inc();
    }
    let _ = end.send(closing);
    drop(session);
    let _ = writer.await;
}

/// The close frame that answers a client whose frames broke the WebSocket rules, if any: too
/// large (1009), not UTF-8 (1007) or otherwise malformed (1002). A connection that failed or
/// was cut gets none.
fn refusal(error: &WsError) -> Option<CloseFrame> {
    match error {
        WsError::Capacity(_) => Some(close_frame(CloseCode::Size, "frame too large")),
        WsError::Utf8(_) => Some(close_frame(CloseCode::Invalid, "text frame is not UTF-8")),
        WsError::Protocol(_) => Some(close_frame(CloseCode::Protocol, "WebSocket protocol error")),
        _ => None,
    }
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

async fn write_frames(
    mut sink: futures::stream::SplitSink<Socket, Message>,
    mut frames: OutboxReceiver,
    kick: CancellationToken,
    mut ended: oneshot::Receiver<Option<CloseFrame>>,
    shutdown: CancellationToken,
) {
    let mut refusal = None;
    // Made once for the connection, not twice for every burst.
    let kicked = kick.cancelled();
    tokio::pin!(kicked);
    loop {
        let frame = tokio::select! {
            biased;
            frame = frames.recv() => frame,
            _ = &mut kicked => None,
            close = &mut ended => {
                refusal = close.ok().flatten();
                None
            }
        };
        let Some(frame) = frame else {
            break;
        };
        // A client that stops reading blocks these writes once the socket's buffers are full;
        // being kicked (too slow, session ended, silent, or the node stopping) or the reader's
        // end (the client closed, or broke the rules) ends them, so such a client holds nothing
        // past its outbox.
        let written = tokio::select! {
            biased;
            _ = &mut kicked => break,
            close = &mut ended => {
                refusal = close.ok().flatten();
                break;
            }
            written = write_burst(&mut sink, frame, &mut frames) => written,
        };
        if written.is_err() {
            return;
        }
    }
    // The outbox closes only after the reader has said why it ended, so if the last frame was
    // read from a closed outbox, the reason is already waiting.
    if refusal.is_none() {
        refusal = ended.try_recv().ok().flatten();
    }
    // An ended session says so even while the node stops: its client must not reconnect.
    let ending = frames.ending();
    let close = match ending {
        Some(Ending::SessionEnded) => ending.map(closing_frame),
        _ if shutdown.is_cancelled() => Some(close_frame(CLOSE_GOING_AWAY, "server shutting down")),
        _ if refusal.is_some() => refusal,
        _ => ending.map(closing_frame),
    };
    // A client that does not read may never take the close frame: it gets a moment, then the
    // connection is dropped without it.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = sink.send(Message::Close(close)).await;
        let _ = sink.close().await;
    })
    .await;
}

fn closing_frame(ending: Ending) -> CloseFrame {
    let (code, reason) = ending.close_code();
    close_frame(code, reason)
}

/// Writes `first` and whatever else is queued (up to [`MAX_FRAMES_PER_FLUSH`]), then flushes.
async fn write_burst(
    sink: &mut futures::stream::SplitSink<Socket, Message>,
    first: Outgoing,
    frames: &mut OutboxReceiver,
) -> Result<(), WsError> {
    sink.feed(message(first)).await?;
    let mut written = 1;
    while written < MAX_FRAMES_PER_FLUSH {
        let Some(item) = frames.try_recv() else {
            break;
        };
        sink.feed(message(item)).await?;
        written += 1;
    }
    sink.flush().await
}

fn message(item: Outgoing) -> Message {
    match item {
        Outgoing::Frame(frame) => Message::Text(frame),
        Outgoing::Ping => Message::Ping(Default::default()),
    }
}

impl Session {
    fn reply(&self, frame: &ServerFrame) {
        // A reply that does not fit in the outbox ends the connection (too slow), as a
        // delivery would: nothing more to do here.
        self.replies.push(hub::frame(frame));
    }

    fn reply_error(&self, error: &FrameError) {
        self.app
            .metrics
            .client_errors
            .with_label_values(&[error.code.as_str()])
            .inc();
        self.reply(&error.to_frame());
    }

    async fn handle_text(&mut self, text: &str) {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(error) => return self.reply_error(&error),
        };
        let result = match frame {
            ClientFrame::Join { room_id, after } => self.join(room_id, after).await,
            ClientFrame::Leave { room_id } => self.leave(room_id).await,
            ClientFrame::Typing { room_id } => self.typing(room_id).await,
            ClientFrame::Send {
                room_id,
                client_msg_id,
                body,
            } => self.send(room_id, client_msg_id, body).await,
            ClientFrame::Edit { room_id, seq, body } => self.change(room_id, seq, Some(body)).await,
            ClientFrame::Delete { room_id, seq } => self.change(room_id, seq, None).await,
            ClientFrame::MarkRead { room_id, seq } => self.mark_read(room_id, seq).await,
            ClientFrame::Presence { status } => self.change_presence(status).await,
        };
        if let Err(error) = result {
            self.reply_error(&error);
        }
    }

    /// Subscribes the connection to a room the user is a member of, after sending what was
    /// missed since `after` when asked. Rooms that do not exist and rooms the user is not in get
    /// the same answer.
    ///
    /// Gap-free (`delivery::resume`): the connection is in the room, its live frames held back,
    /// before what it missed is read.
    async fn join(&mut self, room_id: RoomId, after: Option<Seq>) -> Result<(), FrameError> {
        self.limit(FrameWrite::Join)?;
        let most = self.app.config.room_frames.max_rooms_per_connection;
        if !self.rooms.contains_key(&room_id) && self.rooms.len() >= most {
            return Err(FrameError::new(
                ErrorCode::TooManyRooms,
                format!("a connection may join at most {most} rooms; leave one first"),
            ));
        }
        let checked_at = Instant::now();
        let access = self
            .app
            .directory
            .access(room_id, self.user_id)
            .await
            .map_err(|error| internal("could not check the membership", &error))?;
        let Access::Member(info, _) = access else {
            return Err(not_member(room_id, None));
        };
        if self.rooms.contains_key(&room_id) {
            // Joining again is a resume on the same connection: start over cleanly.
            self.leave_room(room_id).await;
            self.rooms.remove(&room_id);
        }
        let joining = Joining::new(&self.app.hub, &self.app.store, room_id, self.conn);
        let starting_seq = joining
            .starting_seq()
            .await
            .map_err(|error| internal("could not load the room", &error))?;
        {
            let lock = self.app.hub.membership_lock(room_id);
            let _guard = lock.lock().await;
            if let Err(error) = watch::ensure_bound(&self.app, room_id).await {
                tracing::warn!(%error, %room_id, "binding the node queue failed");
                return Err(unavailable(None));
            }
            joining.enter(starting_seq);
            self.rooms.insert(room_id, Confirmation::new(checked_at));
        }
        let budget = self.app.config.ws_outbox_budget();
        if let Err(error) = joining.catch_up(info.name, after, budget).await {
            self.rooms.remove(&room_id);
            self.leave_room(room_id).await;
            return Err(internal("could not read missed messages", &error));
        }
        Ok(())
    }

    /// Forwards a typing indicator to the room's other members, at most one per interval.
    async fn typing(&mut self, room_id: RoomId) -> Result<(), FrameError> {
        self.check_joined(room_id, None).await?;
        let now = Instant::now();
        if let Some(last) = self.typing_sent.get(&room_id) {
            if now.duration_since(*last) < TYPING_INTERVAL {
                return Ok(());
            }
        }
        self.limit(FrameWrite::Typing)?;
        self.typing_sent.insert(room_id, now);
        let event = Delivery::Typing {
            room_id,
            user_id: self.user_id,
            name: self.name.clone(),
            origin: Origin {
                node_id: self.app.node_id().to_owned(),
                conn_id: self.conn,
            },
        };
        if let Err(error) = self.app.bus.publish_ephemeral(room_id, &event).await {
            // Best effort by design: a lost indicator is renewed by the next keystroke.
            tracing::debug!(%error, "typing indicator dropped");
        }
        Ok(())
    }

    /// A `presence` frame: counted against the user's budget of changes, then recorded.
    async fn change_presence(&self, status: PresenceStatus) -> Result<(), FrameError> {
        self.limit(FrameWrite::Presence)?;
        self.set_presence(status).await;
        Ok(())
    }

    /// Records this connection's presence; when the user's state on this node changes, every
    /// node hears of it.
    async fn set_presence(&self, status: PresenceStatus) {
        let Some(changed) = self.app.presence.set_local(self.user_id, self.conn, status) else {
            return;
        };
        self.app
            .presence_changed(PresenceEvent::Local(self.user_id));
        let report = Delivery::Presence {
            node_id: self.app.node_id().to_owned(),
            user_id: self.user_id,
            status: changed,
        };
        if let Err(error) = self.app.bus.publish_to_everyone(&report).await {
            // The next snapshot carries it.
            tracing::debug!(%error, "presence report not sent");
        }
    }

    /// Edits (`body`) or deletes (`None`) a stored message, then tells every member.
    async fn change(
        &mut self,
        room_id: RoomId,
        seq: Seq,
        body: Option<String>,
    ) -> Result<(), FrameError> {
        self.check_joined(room_id, None).await?;
        self.limit(FrameWrite::Change)?;
        let access = self
            .app
            .directory
            .access(room_id, self.user_id)
            .await
            .map_err(|error| internal("could not check the membership", &error))?;
        let Access::Member(_, role) = access else {
            return Err(not_member(room_id, None));
        };
        let store = &self.app.store;
        let kind = if body.is_some() { "edit" } else { "delete" };
        let outcome = match body.clone() {
            Some(body) => store.edit_message(room_id, seq, self.user_id, body).await,
            None => {
                store
                    .delete_message(room_id, seq, self.user_id, role == Role::Owner)
                    .await
            }
        }
        .map_err(|error| internal("could not change a message", &error))?;
        let changed_at_ms = match outcome {
            ChangeOutcome::Changed { at_ms } => at_ms,
            ChangeOutcome::NotFound => {
                return Err(FrameError::new(
                    ErrorCode::MessageNotFound,
                    format!("room {room_id} has no message {seq}"),
                ))
            }
            ChangeOutcome::NotAllowed => {
                return Err(FrameError::new(
                    ErrorCode::NotAllowed,
                    match body {
                        Some(_) => "only the sender may edit a message",
                        None => "only the sender or a room owner may delete a message",
                    },
                ))
            }
        };
        self.app
            .metrics
            .messages_changed
            .with_label_values(&[kind])
            .inc();
        self.app.history.changed([room_id]).await;
        let event = Delivery::MessageChanged {
            room_id,
            seq,
            body,
            changed_at_ms,
            by: self.user_id,
        };
        if let Err(error) = self.app.bus.publish_ephemeral(room_id, &event).await {
            // Stored: history shows it; live members see it when they reload.
            tracing::warn!(%error, "a message change was stored but not broadcast");
            return Err(unavailable(None));
        }
        Ok(())
    }

    /// Moves the user's read marker and tells every connection of the user.
    async fn mark_read(&mut self, room_id: RoomId, seq: Seq) -> Result<(), FrameError> {
        self.limit(FrameWrite::ReadMarker)?;
        let state = self
            .app
            .store
            .mark_read(room_id, self.user_id, seq)
            .await
            .map_err(|error| internal("could not move the read marker", &error))?
            .ok_or_else(|| not_member(room_id, None))?;
        let seq = Seq(state.last_read_seq);
        self.reply(&ServerFrame::ReadMarker {
            room_id,
            seq,
            unread: state.unread,
        });
        let event = Delivery::ReadMarker {
            user_id: self.user_id,
            room_id,
            seq,
            unread: state.unread,
            origin: Origin {
                node_id: self.app.node_id().to_owned(),
                conn_id: self.conn,
            },
        };
        if let Err(error) = self.app.bus.publish_to_everyone(&event).await {
            tracing::debug!(%error, "read marker not synced to other connections");
        }
        Ok(())
    }

    async fn leave(&mut self, room_id: RoomId) -> Result<(), FrameError> {
        if self.rooms.remove(&room_id).is_none() {
            return Err(not_joined(room_id, None));
        }
        self.leave_room(room_id).await;
        self.reply(&ServerFrame::Left { room_id });
        Ok(())
    }

    async fn leave_room(&self, room_id: RoomId) {
        let lock = self.app.hub.membership_lock(room_id);
        let _guard = lock.lock().await;
        self.app.hub.leave(room_id, self.conn);
        if let Err(error) = watch::settle_binding(&self.app, room_id).await {
            tracing::debug!(%error, %room_id, "unbinding the node queue failed");
        }
    }

    /// Room-scoped frames act only in rooms this connection follows: `not_joined` for a room it
    /// never joined (or left), `not_member` once for one the hub took it out of because the
    /// membership ended (it was told with `left`).
    async fn check_joined(
        &mut self,
        room_id: RoomId,
        client_msg_id: Option<&ClientMsgId>,
    ) -> Result<(), FrameError> {
        if !self.rooms.contains_key(&room_id) {
            return Err(not_joined(room_id, client_msg_id.cloned()));
        }
        if self.app.hub.follows(room_id, self.conn) {
            return Ok(());
        }
        self.rooms.remove(&room_id);
        self.typing_sent.remove(&room_id);
        self.leave_room(room_id).await;
        Err(not_member(room_id, client_msg_id.cloned()))
    }

    /// Counts one `write` against the user's budget for it.
    fn limit(&self, write: FrameWrite) -> Result<(), FrameError> {
        self.app
            .frame_limits
            .check(write, self.user_id, self.peer)
            .map_err(rate_limited)
    }

    async fn leave_all(&mut self) {
        for room_id in std::mem::take(&mut self.rooms).into_keys() {
            self.leave_room(room_id).await;
        }
    }

    /// Renews the membership of a room in the background, while sends on it go on (see
    /// `membership`).
    fn renew_membership(&self, room_id: RoomId, confirmation: Arc<Confirmation>) {
        let app = self.app.clone();
        let user_id = self.user_id;
        app.metrics
            .membership_checks
            .with_label_values(&["ahead"])
            .inc();
        tokio::spawn(async move {
            let started = Instant::now();
            match app.directory.role(room_id, user_id).await {
                Ok(Some(_)) => confirmation.renewed(started),
                Ok(None) => confirmation.revoked(),
                Err(_) => confirmation.renewal_failed(),
            }
        });
    }

    async fn send(
        &mut self,
        room_id: RoomId,
        client_msg_id: ClientMsgId,
        body: String,
    ) -> Result<(), FrameError> {
        self.check_joined(room_id, Some(&client_msg_id)).await?;
        if let Err(retry) = self.app.limits.check_send(self.user_id, self.peer) {
            return Err(FrameError::new(
                ErrorCode::RateLimited,
                "too many messages; wait before sending again",
            )
            .with_client_msg_id(Some(client_msg_id))
            .with_retry_after_ms(retry.millis()));
        }
        // Membership may have ended since it was last confirmed. Leaving takes the connection
        // out of the room in the hub; otherwise a recent confirmation stands, and an older one
        // is checked again (`membership`: ahead of time for active users, on the send for the
        // others; a cache hit in the common case, batched with other checks under load).
        let recheck = Duration::from_millis(self.app.config.membership_recheck_ms.max(1));
        let trust = self
            .rooms
            .get(&room_id)
            .map_or(Trust::CheckNow, |confirmation| {
                let trust = confirmation.trust(Instant::now(), recheck);
                if trust == Trust::TrustedRenewNow {
                    self.renew_membership(room_id, confirmation.clone());
                }
                trust
            });
        if trust == Trust::CheckNow || !self.app.hub.follows(room_id, self.conn) {
            let checked_at = Instant::now();
            self.app
                .metrics
                .membership_checks
                .with_label_values(&["send"])
                .inc();
            let role = self
                .app
                .directory
                .role(room_id, self.user_id)
                .await
                .map_err(|error| {
                    internal("could not check the membership", &error)
                        .with_client_msg_id(Some(client_msg_id.clone()))
                })?;
            if role.is_none() {
                self.rooms.remove(&room_id);
                self.leave_room(room_id).await;
                return Err(not_member(room_id, Some(client_msg_id)));
            }
            self.rooms.insert(room_id, Confirmation::new(checked_at));
        }
        let started = Instant::now();
        let message = IngestMessage {
            room_id,
            sender_id: self.user_id,
            sender_name: self.name.clone(),
            client_msg_id: client_msg_id.clone(),
            body,
            sent_at_ms: chrono::Utc::now().timestamp_millis(),
            origin: Origin {
                node_id: self.app.node_id().to_owned(),
                conn_id: self.conn,
            },
        };
        // Submitted here, in the reader, so one connection's sends reach the shard in order.
        // The answer is queued by the task that awaits the publish's confirm, so the client may
        // pipeline sends, and a send costs no task or timer of its own.
        let app = self.app.clone();
        let replies = self.replies.clone();
        let refused_id = client_msg_id.clone();
        let answer = IngestAnswer::new(move |outcome| {
            let frame = match outcome {
                Ok(()) => {
                    app.metrics.messages_accepted.inc();
                    app.metrics
                        .accept_seconds
                        .observe(started.elapsed().as_secs_f64());
                    ServerFrame::Accepted {
                        room_id,
                        client_msg_id,
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "send not confirmed");
                    app.metrics.messages_refused.inc();
                    app.metrics
                        .client_errors
                        .with_label_values(&[ErrorCode::Unavailable.as_str()])
                        .inc();
                    unavailable(Some(client_msg_id)).to_frame()
                }
            };
            replies.push(hub::frame(&frame));
        });
        if let Err(error) = self.app.bus.submit_ingest(message, answer) {
            tracing::debug!(%error, "send refused");
            self.app.metrics.messages_refused.inc();
            return Err(unavailable(Some(refused_id)));
        }
        Ok(())
    }
}

fn not_member(room_id: RoomId, client_msg_id: Option<ClientMsgId>) -> FrameError {
    FrameError::new(
        ErrorCode::NotMember,
        format!("room {room_id} does not exist or you are not a member"),
    )
    .with_client_msg_id(client_msg_id)
}

fn not_joined(room_id: RoomId, client_msg_id: Option<ClientMsgId>) -> FrameError {
    FrameError::new(
        ErrorCode::NotJoined,
        format!("this connection has not joined room {room_id}"),
    )
    .with_client_msg_id(client_msg_id)
}

fn rate_limited(retry: RetryAfter) -> FrameError {
    FrameError::new(
        ErrorCode::RateLimited,
        "too many requests; wait before trying again",
    )
    .with_retry_after_ms(retry.millis())
}

fn unavailable(client_msg_id: Option<ClientMsgId>) -> FrameError {
    FrameError::new(
        ErrorCode::Unavailable,
        "the message service is unavailable; retry with the same client_msg_id",
    )
    .with_client_msg_id(client_msg_id)
}

fn internal(context: &str, error: &dyn std::fmt::Display) -> FrameError {
    tracing::error!(%error, "{context}");
    FrameError::new(ErrorCode::Internal, "internal error; retry later")
}
