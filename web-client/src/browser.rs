//! The few things the app asks of the browser directly: time, visibility, the tab title,
//! local storage, notifications and timers.

use crate::words;
use chat_protocol::RoomId;
use wasm_bindgen::JsValue;

fn window() -> Option<web_sys::Window> {
    web_sys::window()
}

fn document() -> Option<web_sys::Document> {
    window().and_then(|w| w.document())
}

pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

pub fn page_hidden() -> bool {
    document().is_some_and(|d| d.hidden())
}

pub fn set_title(title: &str) {
    if let Some(document) = document() {
        if document.title() != title {
            document.set_title(title);
        }
    }
}

fn storage() -> Option<web_sys::Storage> {
    window().and_then(|w| w.local_storage().ok().flatten())
}

/// A random id for this tab, the prefix of its client message ids.
pub fn tab_id() -> String {
    thread_local! {
        static ID: String = format!(
            "{:x}{:x}",
            (js_sys::Math::random() * 4_294_967_296.0) as u64,
            js_sys::Date::now() as u64
        );
    }
    ID.with(Clone::clone)
}

/// The theme chosen with the toggle: `Some(true)` dark, `Some(false)` light, `None` follow
/// the system.
pub fn saved_theme() -> Option<bool> {
    match storage()?.get_item("chat-theme").ok().flatten().as_deref() {
        Some("dark") => Some(true),
        Some("light") => Some(false),
        _ => None,
    }
}

pub fn save_theme(dark: Option<bool>) {
    if let Some(storage) = storage() {
        let _ = match dark {
            Some(true) => storage.set_item("chat-theme", "dark"),
            Some(false) => storage.set_item("chat-theme", "light"),
            None => storage.remove_item("chat-theme"),
        };
    }
    if let Some(root) = document().and_then(|d| d.document_element()) {
        let _ = match dark {
            Some(true) => root.set_attribute("data-theme", "dark"),
            Some(false) => root.set_attribute("data-theme", "light"),
            None => root.remove_attribute("data-theme"),
        };
    }
}

pub fn remember_room(room_id: RoomId) {
    if let Some(storage) = storage() {
        let _ = storage.set_item("chat-room", &room_id.to_string());
    }
}

pub fn remembered_room() -> Option<RoomId> {
    storage()?
        .get_item("chat-room")
        .ok()
        .flatten()?
        .parse()
        .ok()
        .map(RoomId)
}

/// Waits `millis` milliseconds.
pub async fn sleep(millis: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let set = window().map(|window| {
            window.set_timeout_with_callback_and_timeout_and_arguments_0(
                &resolve,
                i32::try_from(millis).unwrap_or(i32::MAX),
            )
        });
        if !matches!(set, Some(Ok(_))) {
            let _ = resolve.call0(&JsValue::UNDEFINED);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// `HH:MM` of a time, and the full date and time for the tooltip.
pub fn time_of(ms: i64) -> (String, String) {
    let date = js_sys::Date::new(&JsValue::from_f64(ms as f64));
    let short = words::clock(date.get_hours(), date.get_minutes());
    let full = String::from(date.to_string());
    (short, full)
}

/// The calendar day of a time, in words ("Today", "Yesterday", "Monday, 7 December 2026").
pub fn day_of(ms: i64) -> String {
    let date = js_sys::Date::new(&JsValue::from_f64(ms as f64));
    let midnight = |d: &js_sys::Date| {
        js_sys::Date::new_with_year_month_day(
            d.get_full_year(),
            d.get_month() as i32,
            d.get_date() as i32,
        )
        .get_time()
    };
    let today = js_sys::Date::new_0();
    let days_ago = ((midnight(&today) - midnight(&date)) / 86_400_000.0).round() as i64;
    words::day(
        days_ago,
        date.get_day(),
        date.get_date(),
        date.get_month(),
        date.get_full_year() as i32,
    )
}

/// Whether the user allowed notifications.
pub fn notifications_allowed() -> bool {
    web_sys::Notification::permission() == web_sys::NotificationPermission::Granted
}

/// Asks for permission to notify; must run in a user action's handler.
pub fn ask_for_notifications() {
    if let Ok(promise) = web_sys::Notification::request_permission() {
        wasm_bindgen_futures::spawn_local(async move {
            let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
        });
    }
}

/// A notification (a direct message arrived while the tab is hidden).
pub fn notify(title: &str, body: &str) {
    if !notifications_allowed() {
        return;
    }
    let options = web_sys::NotificationOptions::new();
    options.set_body(body);
    options.set_tag("chat-direct");
    let _ = web_sys::Notification::new_with_options(title, &options);
}

pub fn online() -> bool {
    window().is_none_or(|w| w.navigator().on_line())
}

/// Moves focus to the element with this id, if it exists.
pub fn focus_id(id: &str) {
    use wasm_bindgen::JsCast;
    if let Some(element) = document()
        .and_then(|d| d.get_element_by_id(id))
        .and_then(|e| e.dyn_into::<web_sys::HtmlElement>().ok())
    {
        let _ = element.focus();
    }
}

/// The element that has focus now, to give it back after a dialog.
pub fn active_element() -> Option<web_sys::HtmlElement> {
    use wasm_bindgen::JsCast;
    document()
        .and_then(|d| d.active_element())
        .and_then(|e| e.dyn_into::<web_sys::HtmlElement>().ok())
}
