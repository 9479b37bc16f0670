//! The views: functions of the state in [`crate::state::App`]. User text only ever becomes
//! text nodes.
//!
//! - [`auth`]: the sign-in and registration screen,
//! - [`shell`]: the signed-in app: sidebar, room header, banner, members panel,
//! - [`messages`]: the message list and the composer,
//! - [`dialogs`]: room browser, create room, direct message, invite, settings, confirmations,
//! - [`user_picker`]: the user name field that suggests people (an ARIA combobox).

mod auth;
mod dialogs;
mod messages;
mod shell;
mod user_picker;

use crate::api;
use crate::browser;
use crate::state::App;
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;

/// The whole page.
#[component]
pub fn Root() -> impl IntoView {
    let app = App::new();
    provide_context(app);
    browser::save_theme(app.dark.get_untracked());

    // A session cookie from an earlier visit may still be live.
    spawn_local(async move {
        if let Ok(profile) = api::me().await {
            app.signed_in(profile);
        }
        app.starting.set(false);
    });

    // The tab title carries the unread count of every room.
    Effect::new(move |_| {
        let signed_in = app.me.with(Option::is_some);
        let open = app.open.get();
        let rooms = app.rooms.read();
        let name = open
            .and_then(|id| rooms.get(id))
            .map(|e| crate::words::room_title(&e.room.name, e.is_direct(), &app.my_username()));
        let title = if signed_in {
            rooms.title(name.as_deref())
        } else {
            "Chat".to_owned()
        };
        browser::set_title(&title);
    });

    if let Some(document) = web_sys::window().and_then(|w| w.document()) {
        let on_visibility = Closure::<dyn FnMut()>::new(move || app.visibility_changed());
        let _ = document.add_event_listener_with_callback(
            "visibilitychange",
            on_visibility.as_ref().unchecked_ref(),
        );
        // The page lives as long as the app.
        on_visibility.forget();
    }

    let signed_in = Memo::new(move |_| app.me.with(Option::is_some));
    view! {
        {move || {
            if app.starting.get() {
                view! { <div class="splash" role="status"><p>"Loading…"</p></div> }.into_any()
            } else if signed_in.get() {
                view! { <shell::Shell/> }.into_any()
            } else {
                view! { <auth::AuthScreen/> }.into_any()
            }
        }}
    }
}

/// The state, from any view.
pub fn app() -> App {
    use_context::<App>().unwrap_or_default()
}
