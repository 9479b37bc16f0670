//! The page's fixed elements, found by id, and small DOM helpers.
//!
//! The ids here are a contract with `static/index.html` and with the browser tests.

use chat_protocol::limits;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{
    Document, Element, Event, EventTarget, HtmlButtonElement, HtmlFormElement, HtmlInputElement,
};

/// The elements the client reads from and writes to.
#[derive(Clone)]
pub struct Page {
    pub document: Document,
    pub auth_form: HtmlFormElement,
    pub name: HtmlInputElement,
    pub password: HtmlInputElement,
    pub register_button: HtmlButtonElement,
    pub logout_button: HtmlButtonElement,
    pub room: HtmlInputElement,
    pub private: HtmlInputElement,
    pub room_list: Element,
    pub join_form: HtmlFormElement,
    pub join_button: HtmlButtonElement,
    pub status: Element,
    pub error: Element,
    pub messages: Element,
    pub load_older: HtmlButtonElement,
    pub members: Element,
    pub typing: Element,
    pub composer: HtmlInputElement,
}

impl Page {
    /// Finds every element, failing with the id of the first one missing.
    pub fn find() -> Result<Page, JsValue> {
        let document = web_sys::window()
            .and_then(|window| window.document())
            .ok_or_else(|| JsValue::from_str("no document: not running in a page"))?;
        Ok(Page {
            auth_form: by_id(&document, "auth-form")?,
            name: by_id(&document, "name")?,
            password: by_id(&document, "password")?,
            register_button: by_id(&document, "register-button")?,
            logout_button: by_id(&document, "logout-button")?,
            room: by_id(&document, "room")?,
            private: by_id(&document, "private")?,
            room_list: by_id(&document, "room-list")?,
            join_form: by_id(&document, "join-form")?,
            join_button: by_id(&document, "join-button")?,
            status: by_id(&document, "status")?,
            error: by_id(&document, "error")?,
            messages: by_id(&document, "messages")?,
            load_older: by_id(&document, "load-older")?,
            members: by_id(&document, "members")?,
            typing: by_id(&document, "typing")?,
            composer: by_id(&document, "composer")?,
            document,
        })
    }

    /// Puts the inputs in their initial state. The length limits come from the protocol
    /// crate so that the page and the server cannot disagree.
    pub fn prepare(&self) {
        self.name
            .set_max_length(max_length(limits::MAX_USERNAME_CHARS));
        self.password
            .set_max_length(max_length(limits::MAX_PASSWORD_CHARS));
        self.room
            .set_max_length(max_length(limits::MAX_ROOM_NAME_CHARS));
        self.composer
            .set_max_length(max_length(limits::MAX_BODY_CHARS));
        self.set_joined(false);
        self.set_signed_in(None);
    }

    /// Shows the sign-in form, or the room controls for a signed-in user.
    pub fn set_signed_in(&self, username: Option<&str>) {
        let signed_in = username.is_some();
        self.join_button.set_disabled(!signed_in);
        self.room.set_disabled(!signed_in);
        self.logout_button.set_disabled(!signed_in);
        match username {
            Some(name) => self.set_status(&format!("signed in as {name}")),
            None => self.set_status("sign in or register to chat"),
        }
    }

    pub fn set_status(&self, text: &str) {
        self.status.set_text_content(Some(text));
    }

    /// Shows an error, as `code: message` for the server's error frames.
    pub fn set_error(&self, text: &str) {
        self.error.set_text_content(Some(text));
    }

    /// Switches between the joined page (composer on, the form switches rooms) and the
    /// page that is not in a room.
    pub fn set_joined(&self, joined: bool) {
        self.composer.set_disabled(!joined);
        let label = if joined { "Switch room" } else { "Join" };
        self.join_button.set_text_content(Some(label));
    }
}

/// Calls `handler` for every `event` on `target`, for as long as the page lives.
pub fn listen<E>(
    target: &EventTarget,
    event: &str,
    mut handler: impl FnMut(E) + 'static,
) -> Result<(), JsValue>
where
    E: JsCast,
{
    let closure = Closure::<dyn FnMut(Event)>::new(move |event: Event| {
        if let Ok(event) = event.dyn_into::<E>() {
            handler(event);
        }
    });
    target.add_event_listener_with_callback(event, closure.as_ref().unchecked_ref())?;
    // The page's handlers are never removed, so the closure must outlive this call:
    // leaking it hands its ownership to the JavaScript side.
    closure.forget();
    Ok(())
}

/// Runs `callback` once, `millis` from now. Without a window it never runs, which only
/// happens outside a page.
pub fn after(millis: u32, callback: impl FnOnce() + 'static) {
    let callback = Closure::once_into_js(callback);
    if let Some(window) = web_sys::window() {
        let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(
            callback.unchecked_ref(),
            i32::try_from(millis).unwrap_or(i32::MAX),
        );
    }
}

/// Waits `millis` milliseconds (at once when the timer cannot be set).
pub async fn sleep(millis: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let set = web_sys::window().map(|window| {
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

/// Milliseconds since the Unix epoch, by the browser's clock.
pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Whether the page is hidden (another tab, a minimised window).
pub fn page_hidden(document: &Document) -> bool {
    document.hidden()
}

/// The nearest element at or above the event's target that matches `selector`.
pub fn closest(event: &Event, selector: &str) -> Option<Element> {
    event
        .target()?
        .dyn_into::<Element>()
        .ok()?
        .closest(selector)
        .ok()
        .flatten()
}

/// A readable text for an error thrown by JavaScript.
pub fn describe(error: &JsValue) -> String {
    if let Some(text) = error.as_string() {
        return text;
    }
    if let Some(error) = error.dyn_ref::<js_sys::Error>() {
        return format!("{}: {}", error.name(), error.message());
    }
    format!("{error:?}")
}

fn by_id<T: JsCast>(document: &Document, id: &str) -> Result<T, JsValue> {
    document
        .get_element_by_id(id)
        .ok_or_else(|| JsValue::from_str(&format!("the page has no #{id} element")))?
        .dyn_into::<T>()
        .map_err(|_| JsValue::from_str(&format!("#{id} is not the expected kind of element")))
}

fn max_length(chars: usize) -> i32 {
    i32::try_from(chars).unwrap_or(i32::MAX)
}
