//! `GET /api/search`: messages of the caller's rooms found by their words, newest first.

use super::{finish, json, request, Request, RequestError, NUL_REFUSED};
use crate::app::App;
use crate::store::SearchRequest;
use chat_protocol::limits::{
    DEFAULT_SEARCH_RESULTS, MAX_SEARCH_QUERY_CHARS, MAX_SEARCH_RESULTS, MAX_SEARCH_TERMS,
};
use chat_protocol::search::{self, Cursor, SearchHit, SearchPage};
use chat_protocol::{RoomId, UserId};
use std::collections::HashMap;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

type Result<T> = std::result::Result<T, RequestError>;

pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    warp::path!("search")
        .and(warp::get())
        .and(request(app))
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |request: Request, query: HashMap<String, String>| async move {
                finish(search(request, query).await)
            },
        )
        .boxed()
}

fn bad(message: String) -> RequestError {
    RequestError::BadRequest(message)
}

/// An optional whole-number parameter; present but not a positive number is a bad request.
fn id_param(query: &HashMap<String, String>, name: &str) -> Result<Option<i64>> {
    query
        .get(name)
        .map(|value| {
            value
                .parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| bad(format!("`{name}` is a positive whole number")))
        })
        .transpose()
}

async fn search(request: Request, query: HashMap<String, String>) -> Result<Response> {
    let me = request.identify().await?;
    let text = query.get("q").map(String::as_str).unwrap_or_default();
    if text.contains('\0') {
        return Err(bad(NUL_REFUSED.to_owned()));
    }
    if text.chars().count() > MAX_SEARCH_QUERY_CHARS {
        return Err(bad(format!(
            "`q` is at most {MAX_SEARCH_QUERY_CHARS} characters"
        )));
    }
    if !search::within_terms(text) {
        return Err(bad(format!("`q` has at most {MAX_SEARCH_TERMS} words")));
    }
    let room = id_param(&query, "room_id")?.map(RoomId);
    let sender = id_param(&query, "sender_id")?.map(UserId);
    let before = query
        .get("before")
        .map(|text| {
            Cursor::parse(text)
                .ok_or_else(|| bad("`before` is the `next` of an earlier page".to_owned()))
        })
        .transpose()?;
    let limit = match query.get("limit") {
        None => DEFAULT_SEARCH_RESULTS,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_SEARCH_RESULTS).contains(limit))
            .ok_or_else(|| bad(format!("`limit` is 1 to {MAX_SEARCH_RESULTS}")))?,
    };
    let terms = search::terms(text);
    // Nothing to look for (no word, or only excluded ones) finds nothing, not everything.
    if terms.is_empty() {
        return Ok(json(
            StatusCode::OK,
            &SearchPage {
                hits: Vec::new(),
                next: None,
            },
        ));
    }
    let messages = request
        .app
        .store
        .search_messages(SearchRequest {
            user: me.user.user_id,
            query: text.to_owned(),
            room,
            sender,
            before,
            limit: limit as i64,
        })
        .await?;
    // A full page may have more after it; a shorter one is the last.
    let next = messages
        .last()
        .filter(|_| messages.len() == limit)
        .map(|last| Cursor::of(last).encode());
    let hits = messages
        .into_iter()
        .map(|message| SearchHit {
            marks: search::marks(&message.body, &terms),
            message,
        })
        .collect();
    Ok(json(StatusCode::OK, &SearchPage { hits, next }))
}
