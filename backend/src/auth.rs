//! Who is asking: password hashing, session tokens, the session cookie and the `Origin` check.
//!
//! A session token is 32 random bytes, hex-encoded, handed to the client once (in the login
//! answer and the cookie). PostgreSQL keeps only its SHA-256, so reading the sessions table
//! signs nobody in. Browsers send the token as an HttpOnly, SameSite=Strict cookie; other
//! clients as `Authorization: Bearer <token>`. The WebSocket upgrade is authenticated the same way.
//!
//! A WebSocket outlives its upgrade, so its session is checked again while it is open. Ending
//! a session (logout, password change) closes its sockets on every node at once: the node that
//! ended it tells every node (`Delivery::SessionsEnded`), and each closes the matching local
//! connections with `CLOSE_SESSION_ENDED`. In case that notice is lost (RabbitMQ away), and for
//! sessions that expire or go by any other way, every node also looks up the sessions of its
//! open connections every `CHAT_SESSION_RECHECK_MS`, in one query, and closes those that are no
//! longer live.

use crate::app::App;
use crate::store::{SessionUser, StoreError};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chat_protocol::bus::{Delivery, EndedSessions};
use chat_protocol::UserId;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "chat_session";

/// A signed-in user, as a request handler or WebSocket session sees them.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: SessionUser,
    /// Hash of the token this request came with (logout revokes exactly this session).
    pub token_hash: Vec<u8>,
}

impl Identity {
    /// The session, as the connections opened with it keep it.
    pub fn session_key(&self) -> SessionKey {
        SessionKey::from_hash(&self.token_hash)
    }
}

/// A session as an open connection remembers it: its token's SHA-256, kept inline (no
/// allocation per connection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// The key of a token hash ([`hash_token`]'s 32 bytes; anything else matches no session).
    pub fn from_hash(token_hash: &[u8]) -> SessionKey {
        SessionKey(<[u8; 32]>::try_from(token_hash).unwrap_or_default())
    }

    /// The hash in hex, as `Delivery::SessionsEnded` names sessions.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Closes the sockets of ended sessions on this node at once, and tells every other node.
/// Best effort on the bus: a lost notice is made up by the periodic re-check.
pub async fn sessions_ended(app: &App, user_id: UserId, ended: EndedSessions) {
    let closed = app
        .hub
        .end_sessions(user_id, |session| ended.includes(&session.to_hex()));
    tracing::debug!(%user_id, closed, "sessions ended");
    let notice = Delivery::SessionsEnded { user_id, ended };
    if let Err(error) = app.bus.publish_to_everyone(&notice).await {
        tracing::warn!(%error, "other nodes not told of ended sessions; their re-check will");
    }
}

/// Every `every`, closes the local connections whose session is no longer live in PostgreSQL
/// (ended, expired or gone): one query per check for every session with an open connection.
pub async fn recheck_sessions_every(app: Arc<App>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        recheck_sessions(&app).await;
    }
}

async fn recheck_sessions(app: &App) {
    let open: HashSet<SessionKey> = app.hub.sessions();
    if open.is_empty() {
        return;
    }
    let hashes = open.iter().map(|key| key.as_bytes().to_vec()).collect();
    let live: HashSet<SessionKey> = match app.store.live_sessions(hashes).await {
        Ok(live) => live
            .iter()
            .map(|hash| SessionKey::from_hash(hash))
            .collect(),
        Err(error) => {
            // Nobody is signed out because PostgreSQL did not answer; the next check will do.
            tracing::warn!(%error, "could not re-check the sessions of open connections");
            return;
        }
    };
    let ended: HashSet<SessionKey> = open.difference(&live).copied().collect();
    if ended.is_empty() {
        return;
    }
    let closed = app
        .hub
        .end_sessions_of_any(|session| ended.contains(session));
    tracing::info!(
        closed,
        "closed connections of sessions that are no longer live"
    );
}

/// What a request carries that may identify its user, read from its headers.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub cookie: Option<String>,
    pub authorization: Option<String>,
}

impl Credentials {
    /// The session token: the bearer header wins over the cookie.
    pub fn token(&self) -> Option<&str> {
        if let Some(token) = self
            .authorization
            .as_deref()
            .and_then(|value| value.strip_prefix("Bearer "))
        {
            return Some(token.trim());
        }
        self.cookie.as_deref()?.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value.trim())
        })
    }
}

/// Resolves credentials to a live session; `None` for no, unknown, revoked or expired tokens.
pub async fn authenticate(
    app: &App,
    credentials: &Credentials,
) -> Result<Option<Identity>, StoreError> {
    let Some(token) = credentials.token() else {
        return Ok(None);
    };
    if token.is_empty() || token.len() > 128 {
        return Ok(None);
    }
    let token_hash = hash_token(token);
    let user = app.store.session_user(token_hash.clone()).await?;
    Ok(user.map(|user| Identity { user, token_hash }))
}

/// A new session token and the hash to store.
pub fn new_token() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let hash = hash_token(&token);
    (token, hash)
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Hashes a password with argon2id (the crate's default parameters) on a password thread.
pub async fn hash_password(password: String) -> Result<String, PasswordError> {
    on_password_thread(move || hash_password_now(&password)).await?
}

/// Checks a password against a stored hash on a password thread. With no hash (an unknown user)
/// it checks against a fixed one, so the answer takes as long either way.
pub async fn verify_password(
    password: String,
    hash: Option<String>,
) -> Result<bool, PasswordError> {
    on_password_thread(move || {
        let known_user = hash.is_some();
        let hash = hash.as_deref().unwrap_or_else(|| dummy_hash());
        let parsed = PasswordHash::new(hash).map_err(|e| PasswordError(e.to_string()))?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(matches && known_user)
    })
    .await?
}

/// Password hashing failed (never caused by the client).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct PasswordError(String);

impl From<oneshot::error::RecvError> for PasswordError {
    fn from(_: oneshot::error::RecvError) -> Self {
        PasswordError("the password thread stopped".into())
    }
}

fn hash_password_now(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError(e.to_string()))
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password_now("not a password anyone has").unwrap_or_default())
}

/// Threads that hash and verify passwords.
///
/// argon2id uses 19 MiB per hash. On tokio's blocking pool each hash may land on a different
/// thread, and glibc keeps each thread's freed memory in that thread's arena: a node grew by
/// about 17 MiB per sign-up. A fixed pair of threads bounds that memory (and the CPU a sign-up
/// storm can take); further hashes wait their turn.
const PASSWORD_THREADS: usize = 2;

type PasswordJob = Box<dyn FnOnce() + Send>;

fn password_queue() -> &'static Mutex<std::sync::mpsc::Sender<PasswordJob>> {
    static QUEUE: OnceLock<Mutex<std::sync::mpsc::Sender<PasswordJob>>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<PasswordJob>();
        let receiver = std::sync::Arc::new(Mutex::new(receiver));
        for index in 0..PASSWORD_THREADS {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-{index}"))
                .spawn(move || loop {
                    let job = crate::locks::lock(&receiver).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a password thread");
            }
        }
        Mutex::new(sender)
    })
}

async fn on_password_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, oneshot::error::RecvError> {
    let span = tracing::Span::current();
    let (answer, outcome) = oneshot::channel();
    let job: PasswordJob = Box::new(move || {
        let _entered = span.enter();
        let _ = answer.send(work());
    });
    {
        let queue = crate::locks::lock(password_queue());
        // A send fails only when every password thread failed to start; the dropped answer
        // then reports the failure below.
        let _ = queue.send(job);
    }
    outcome.await
}

/// The `Set-Cookie` value that stores a session in the browser.
pub fn session_cookie(token: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn cleared_cookie(secure: bool) -> String {
    session_cookie("", 0, secure)
}

/// A request without `Origin` is not from a browser page, and is allowed. A browser request is
/// allowed from the node's own origin (the `Host` it was sent to) and the configured ones.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    if let Some(host) = host {
        let own_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if own_host == Some(host) {
            return true;
        }
    }
    allowed
        .iter()
        .map(|allowed| allowed.trim().trim_end_matches('/'))
        .any(|allowed| !allowed.is_empty() && allowed.eq_ignore_ascii_case(origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_wins_over_cookie() {
        let both = Credentials {
            cookie: Some("theme=dark; chat_session=fromcookie".into()),
            authorization: Some("Bearer fromheader".into()),
        };
        assert_eq!(both.token(), Some("fromheader"));
        let cookie = Credentials {
            cookie: Some("a=1; chat_session=abc ; b=2".into()),
            authorization: Some("Basic xyz".into()),
        };
        assert_eq!(cookie.token(), Some("abc"));
        assert_eq!(Credentials::default().token(), None);
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, hash_a) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash_token(&a), hash_a);
    }

    #[test]
    fn session_keys_are_the_token_hash() {
        let (_, hash) = new_token();
        let key = SessionKey::from_hash(&hash);
        assert_eq!(key.as_bytes(), &hash[..]);
        assert_eq!(key.to_hex(), hex::encode(&hash));
        assert_eq!(SessionKey::from_hash(b"short"), SessionKey::default());
    }

    #[test]
    fn passwords_verify() {
        let hash = hash_password_now("correct horse").unwrap_or_default();
        assert!(hash.starts_with("$argon2id$"));
        let parsed = PasswordHash::new(&hash);
        assert!(parsed.is_ok());
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://chat.example".to_owned()];
        assert!(origin_allowed(&allowed, None, None));
        assert!(origin_allowed(&allowed, Some("https://chat.example"), None));
        assert!(origin_allowed(
            &[],
            Some("http://127.0.0.1:8081"),
            Some("127.0.0.1:8081")
        ));
        assert!(!origin_allowed(
            &allowed,
            Some("https://evil.example"),
            Some("chat.example")
        ));
        assert!(!origin_allowed(&[String::new()], Some("null"), None));
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let cookie = session_cookie("t", 60, true);
        assert!(cookie.contains("HttpOnly"));
        assert!(cookie.contains("SameSite=Strict"));
        assert!(cookie.ends_with("Secure"));
        assert!(cleared_cookie(false).contains("Max-Age=0"));
    }
}
