//! A REST client for tests: every `/api` call, answers as status plus JSON.

use anyhow::{bail, Context};
use chat_protocol::api::{Room, RoomList, SessionInfo};
use chat_protocol::RoomId;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// The password [`Api::sign_in`] gives the users it creates.
pub fn test_password(username: &str) -> String {
    format!("{username}-correct-horse")
}

/// A REST client for one node, signed in or not.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// The node's `/metrics` URL, on its operator's listener.
    metrics: Option<String>,
}

/// An answer: status, headers and the JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The error code of an error answer ("" otherwise).
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// The body as `T`, failing unless the status is 2xx.
    pub fn into<T: DeserializeOwned>(self) -> anyhow::Result<T> {
        if !(200..300).contains(&self.status) {
            bail!("expected success, got {} {}", self.status, self.body);
        }
        serde_json::from_value(self.body).context("unexpected answer shape")
    }

    /// Fails unless the answer is this status with this error code.
    pub fn expect_error(&self, status: u16, code: &str) -> anyhow::Result<()> {
        if self.status != status || self.code() != code {
            bail!(
                "expected {status} {code}, got {} {}",
                self.status,
                self.body
            );
        }
        Ok(())
    }
}

impl Api {
    /// A client for the node at `base` (`http://host:port`), not signed in.
    pub fn new(base: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token: None,
            metrics: None,
        }
    }

    /// The same node, whose metrics are read at `url`.
    pub fn with_metrics(&self, url: &str) -> Api {
        Api {
            metrics: Some(url.to_owned()),
            ..self.clone()
        }
    }

    /// The same node, with this bearer token.
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Registers `username` with [`test_password`], or logs in if it exists.
    pub async fn sign_in(&self, username: &str) -> anyhow::Result<Api> {
        let password = test_password(username);
        let registered = self
            .post(
                "/api/register",
                json!({"username": username, "password": password}),
            )
            .await?;
        let session: SessionInfo = if registered.status == 409 {
            self.post(
                "/api/login",
                json!({"username": username, "password": password}),
            )
            .await?
            .into()?
        } else {
            registered.into()?
        };
        Ok(self.with_token(&session.token))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// A POST without a body.
    pub async fn post_empty(&self, path: &str) -> anyhow::Result<Reply> {
        self.call(Method::POST, path, None).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> anyhow::Result<Reply> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Reply> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request = match body {
            Some(body) => request.json(&body),
            None => request.header("content-length", "0"),
        };
        self.send(request).await
    }

    /// Sends a request built by the caller (for odd headers or raw bodies).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A new private room with this name, owned by this user.
    pub async fn private_room(&self, name: &str) -> anyhow::Result<RoomId> {
        let created = self
            .post("/api/rooms", json!({"name": name, "visibility": "private"}))
            .await?;
        anyhow::ensure!(created.status == 201, "room not created: {}", created.body);
        let room: Room = created.into()?;
        Ok(room.room_id)
    }

    /// The public room with exactly this name, created if there is none.
    pub async fn public_room(&self, name: &str) -> anyhow::Result<RoomId> {
        for _ in 0..5 {
            let query = serde_json::to_string(name)?;
            let found: RoomList = self
                .http
                .get(format!("{}/api/rooms", self.base))
                .query(&[("q", name)])
                .bearer_auth(self.token.as_deref().unwrap_or(""))
                .send()
                .await?
                .json()
                .await
                .with_context(|| format!("searching rooms for {query}"))?;
            if let Some(room) = found.rooms.iter().find(|room| room.name == name) {
                return Ok(room.room_id);
            }
            let created = self
                .post("/api/rooms", json!({"name": name, "visibility": "public"}))
                .await?;
            // Someone else created it in between: search again.
            if created.status == 409 {
                continue;
            }
            let room: Room = created.into()?;
            return Ok(room.room_id);
        }
        bail!("could not find or create room {name:?}")
    }
}

impl Api {
    /// The value of one Prometheus series on this node (`name{labels}` exactly as rendered),
    /// or 0 when the node has not rendered it yet.
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let text = self.metrics_text().await?;
        Ok(text
            .lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0))
    }

    /// The node's whole `/metrics` page.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let url = (self.metrics.as_deref())
            .context("this client does not know where the node's metrics are")?;
        Ok(self.http.get(url).send().await?.text().await?)
    }
}
