//! The signed-in app: the sidebar (rooms, direct messages, with unread counts), the open
//! room's header, the connection banner, the conversation and the members panel. Below 800 px
//! the sidebar and the members panel are drawers.

use super::app;
use super::dialogs::Dialogs;
use super::messages::{Composer, MessageList};
use crate::state::{App, Dialog, Link};
use crate::unread::{count_label, RoomEntry};
use crate::words;
use chat_protocol::api::{Role, RoomKind};
use chat_protocol::PresenceStatus;
use leptos::prelude::*;
use wasm_bindgen::JsCast;

#[component]
pub fn Shell() -> impl IntoView {
    let app = app();
    // Back to the room of the last visit, once the list is there.
    Effect::new(move |done: Option<bool>| {
        if done == Some(true) || !app.rooms_loaded.get() {
            return done.unwrap_or(false);
        }
        if app.open.get_untracked().is_none() {
            let remembered = crate::browser::remembered_room()
                .filter(|id| app.rooms.with_untracked(|r| r.get(*id).is_some()));
            let first = app
                .rooms
                .with_untracked(|r| r.entries.first().map(RoomEntry::id));
            if let Some(room_id) = remembered.or(first) {
                app.open_room(room_id);
            }
        }
        true
    });

    let classes = move || {
        let mut class = String::from("app");
        if app.sidebar_open.get() {
            class.push_str(" sidebar-open");
        }
        if app.members_open.get() {
            class.push_str(" members-open");
        }
        class
    };
    let close_drawers = move |_| {
        app.sidebar_open.set(false);
        app.members_open.set(false);
    };

    view! {
        <div class=classes>
            <a class="skip-link" href="#composer">"Skip to the message box"</a>
            <Sidebar/>
            <main class="main" id="main">
                <RoomHeader/>
                <Banner/>
                <Notice/>
                <MessageList/>
                <Typing/>
                <Composer/>
            </main>
            <MembersPanel/>
            <div class="scrim" on:click=close_drawers aria-hidden="true"></div>
            <Dialogs/>
            <div id="announcer" class="visually-hidden" aria-live="polite" aria-atomic="true">
                {move || app.announcement.get()}
            </div>
        </div>
    }
}

/// Moves focus between the room links with the arrow keys, Home and End.
fn arrow_keys(ev: leptos::ev::KeyboardEvent) {
    let key = ev.key();
    if !matches!(key.as_str(), "ArrowDown" | "ArrowUp" | "Home" | "End") {
        return;
    }
    let Some(document) = web_sys::window().and_then(|w| w.document()) else {
        return;
    };
    let Ok(links) = document.query_selector_all("#sidebar .room-link") else {
        return;
    };
    let links: Vec<web_sys::HtmlElement> = (0..links.length())
        .filter_map(|i| links.item(i))
        .filter_map(|n| n.dyn_into::<web_sys::HtmlElement>().ok())
        .collect();
    if links.is_empty() {
        return;
    }
    let active = document.active_element();
    let at = links
        .iter()
        .position(|l| active.as_ref().is_some_and(|a| a == &**l));
    let next = match (key.as_str(), at) {
        ("Home", _) => 0,
        ("End", _) => links.len() - 1,
        ("ArrowDown", Some(i)) => (i + 1).min(links.len() - 1),
        ("ArrowUp", Some(i)) => i.saturating_sub(1),
        _ => 0,
    };
    ev.prevent_default();
    let _ = links[next].focus();
}

#[component]
fn Sidebar() -> impl IntoView {
    let app = app();
    let username = move || {
        app.me.with(|p| {
            p.as_ref()
                .map(|p| p.display_name.clone())
                .unwrap_or_default()
        })
    };
    let rooms = move |direct: bool| {
        app.rooms.with(|r| {
            r.entries
                .iter()
                .filter(|e| e.is_direct() == direct)
                .cloned()
                .collect::<Vec<_>>()
        })
    };
    let section = move |direct: bool| {
        let list = rooms(direct);
        if list.is_empty() {
            let text = if !app.rooms_loaded.get() {
                "Loading…"
            } else if direct {
                "No conversations yet."
            } else {
                "You are in no rooms yet. Browse or create one."
            };
            return view! { <p class="empty">{text}</p> }.into_any();
        }
        view! {
            <ul class="room-list" aria-label=if direct { "Direct messages" } else { "Rooms" }>
                {list.into_iter().map(|entry| view! { <RoomItem entry=entry/> }).collect_view()}
            </ul>
        }
        .into_any()
    };
    let theme_label = move || match app.dark.get() {
        Some(true) => "Dark theme",
        Some(false) => "Light theme",
        None => "System theme",
    };
    let cycle_theme = move |_| {
        let next = match app.dark.get_untracked() {
            None => Some(true),
            Some(true) => Some(false),
            Some(false) => None,
        };
        app.set_dark(next);
    };
    view! {
        <nav id="sidebar" class="sidebar" aria-label="Rooms and direct messages"
             on:keydown=arrow_keys>
            <div class="sidebar-head">
                <span class="me" id="me-name">{username}</span>
                <button id="open-settings" class="icon-button" type="button"
                        aria-label="Settings" title="Settings"
                        on:click=move |_| app.open_from_sidebar(Dialog::Settings)>"⚙"</button>
                <button class="icon-button only-narrow" type="button" aria-label="Close room list"
                        on:click=move |_| app.sidebar_open.set(false)>"✕"</button>
            </div>
            <div class="sidebar-actions">
                <button id="browse-rooms" type="button"
                        on:click=move |_| app.open_from_sidebar(Dialog::Browse)>"Browse rooms"</button>
                <button id="create-room" type="button"
                        on:click=move |_| app.open_from_sidebar(Dialog::CreateRoom)>"Create room"</button>
            </div>
            <h2 class="section-title">"Rooms"</h2>
            <div id="room-section">{move || section(false)}</div>
            <div class="section-head">
                <h2 class="section-title">"Direct messages"</h2>
                <button id="new-direct" class="icon-button" type="button"
                        aria-label="New direct message" title="New direct message"
                        on:click=move |_| app.open_from_sidebar(Dialog::NewDirect)>"+"</button>
            </div>
            <div id="direct-section">{move || section(true)}</div>
            <div class="sidebar-foot">
                <button id="theme-toggle" type="button" on:click=cycle_theme
                        aria-label=move || format!("Theme: {}. Change theme", theme_label())>
                    {theme_label}
                </button>
            </div>
        </nav>
    }
}

#[component]
fn RoomItem(entry: RoomEntry) -> impl IntoView {
    let app = app();
    let room_id = entry.id();
    let direct = entry.is_direct();
    let private = entry.room.kind == RoomKind::Private;
    let title = words::room_title(&entry.room.name, direct, &app.my_username());
    let unread = entry.unread;
    let current = move || (app.open.get() == Some(room_id)).then_some("page");
    let class = move || {
        let mut class = String::from("room-link");
        if app.open.get() == Some(room_id) {
            class.push_str(" current");
        }
        if unread > 0 {
            class.push_str(" has-unread");
        }
        class
    };
    let mark = if direct {
        "@"
    } else if private {
        // Not the lock emoji: many systems have no emoji font, and it shows as an empty box.
        "◆"
    } else {
        "#"
    };
    view! {
        <li class="room" data-room-id=room_id.to_string() data-unread=unread.to_string()
            data-name=entry.room.name.clone()>
            <button class=class type="button" aria-current=current
                    on:click=move |_| app.open_room(room_id)>
                <span class="room-mark" aria-hidden="true">{mark}</span>
                <span class="room-name">{title}</span>
                {private.then(|| view! { <span class="visually-hidden">", private"</span> })}
                {(unread > 0).then(|| view! {
                    <span class="badge" aria-hidden="true">{count_label(unread)}</span>
                    <span class="visually-hidden">{format!(", {} unread", count_label(unread))}</span>
                })}
            </button>
        </li>
    }
}

#[component]
fn RoomHeader() -> impl IntoView {
    let app = app();
    let entry = move || {
        let open = app.open.get()?;
        app.rooms.with(|r| r.get(open).cloned())
    };
    let title = move || match entry() {
        Some(e) => words::room_title(&e.room.name, e.is_direct(), &app.my_username()),
        None => "No room open".to_owned(),
    };
    let kind = move || match entry().map(|e| e.room.kind) {
        Some(RoomKind::Public) => "Public room",
        Some(RoomKind::Private) => "Private room",
        Some(RoomKind::Direct) => "Direct message",
        None => "",
    };
    let can_invite = move || entry().is_some_and(|e| !e.is_direct());
    let is_owner = move || entry().is_some_and(|e| e.room.role == Some(Role::Owner));
    view! {
        <header class="room-header">
            <button id="open-sidebar" class="icon-button only-narrow" type="button"
                    aria-label="Open room list" aria-controls="sidebar"
                    aria-expanded=move || app.sidebar_open.get().to_string()
                    on:click=move |_| app.sidebar_open.set(true)>"☰"</button>
            <div class="room-heading">
                <h1 id="room-title">{title}</h1>
                <span class="room-kind">{kind}{move || is_owner().then_some(" · you own it")}</span>
            </div>
            {move || entry().is_some().then(|| view! {
                <div class="room-actions">
                    {can_invite().then(|| view! {
                        <button id="invite-button" type="button"
                                on:click=move |_| app.dialog.set(Some(Dialog::Invite))>"Invite"</button>
                    })}
                    <button id="leave-button" type="button"
                            on:click=move |_| app.dialog.set(Some(Dialog::ConfirmLeave))>"Leave"</button>
                    <button id="toggle-members" type="button" aria-controls="members-panel"
                            aria-expanded=move || app.members_open.get().to_string()
                            on:click=move |_| app.members_open.update(|o| *o = !*o)>"Members"</button>
                </div>
            })}
        </header>
    }
}

#[component]
fn Banner() -> impl IntoView {
    let app = app();
    view! {
        <div id="connection-banner" role="status" class=move || match app.link.get() {
            Link::Live => "banner hidden",
            _ => "banner",
        }>
            {move || match app.link.get() {
                Link::Live => String::new(),
                Link::Connecting => "Connecting… Sending is paused until the connection is up.".to_owned(),
                Link::Reconnecting(why) => format!("Reconnecting… {why} Sending is paused; nothing you already see is lost."),
                Link::Offline => "You are offline. Sending is paused until the network is back.".to_owned(),
            }}
        </div>
    }
}

#[component]
fn Notice() -> impl IntoView {
    let app = app();
    move || {
        app.notice.get().map(|text| {
            view! {
                <div id="notice" class="notice" role="alert">
                    <span>{text}</span>
                    <button type="button" class="link-button" on:click=move |_| app.notice.set(None)>
                        "Dismiss"
                    </button>
                </div>
            }
        })
    }
}

#[component]
fn Typing() -> impl IntoView {
    let app = app();
    view! {
        <p id="typing" class="typing">
            {move || {
                let names: Vec<String> = app.typing.with(|t| t.iter().map(|t| t.name.clone()).collect());
                match names.len() {
                    0 => String::new(),
                    1 => format!("{} is typing…", names[0]),
                    _ => format!("{} are typing…", names.join(", ")),
                }
            }}
        </p>
    }
}

fn presence_text(status: PresenceStatus) -> &'static str {
    match status {
        PresenceStatus::Online => "online",
        PresenceStatus::Away => "away",
        PresenceStatus::Offline => "offline",
    }
}

#[component]
fn MembersPanel() -> impl IntoView {
    let app: App = app();
    view! {
        <aside id="members-panel" class="members-panel" aria-label="Members">
            <div class="panel-head">
                <h2>"Members"</h2>
                <button class="icon-button only-narrow" type="button" aria-label="Close members"
                        on:click=move |_| app.members_open.set(false)>"✕"</button>
            </div>
            <ul id="members" class="members">
                {move || app.members.get().into_iter().map(|m| {
                    let presence = presence_text(m.presence);
                    view! {
                        <li class="member" data-username=m.username.clone() data-presence=presence>
                            <span class=format!("presence-dot {presence}") aria-hidden="true"></span>
                            <span class="member-name">{m.display_name.clone()}</span>
                            <span class="member-presence">{presence}</span>
                            {(m.role == Role::Owner).then(|| view! { <span class="role">"owner"</span> })}
                        </li>
                    }
                }).collect_view()}
            </ul>
        </aside>
    }
}
