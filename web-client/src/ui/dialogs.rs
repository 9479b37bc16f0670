//! Dialogs: the room browser, create room, new direct message, invite, settings, and the
//! confirmations of delete and leave. Focus moves into a dialog when it opens and back to
//! where it was when it closes; Escape closes it. The user name fields of the direct-message
//! and invitation dialogs suggest people as they are typed (`user_picker`).

use super::app;
use super::user_picker::UserPicker;
use crate::api;
use crate::browser;
use crate::state::{App, Dialog};
use crate::words;
use chat_protocol::api::{ProfileUpdate, Room, RoomKind};
use chat_protocol::RoomId;
use leptos::prelude::*;
use leptos::task::spawn_local;

#[component]
pub fn Dialogs() -> impl IntoView {
    let app = app();
    // Where focus was when the dialog opened.
    let opener: StoredValue<Option<web_sys::HtmlElement>, LocalStorage> =
        StoredValue::new_local(None);
    Effect::new(move |previous: Option<Option<Dialog>>| {
        let now = app.dialog.get();
        match (previous.flatten(), now) {
            (None, Some(_)) => {
                opener.set_value(browser::active_element());
                // After the dialog is drawn.
                spawn_local(async move {
                    browser::sleep(0).await;
                    browser::focus_id("dialog-first");
                });
            }
            (Some(_), None) => {
                if let Some(el) = opener.get_value() {
                    let _ = el.focus();
                }
            }
            _ => {}
        }
        now
    });
    move || {
        app.dialog.get().map(|dialog| {
            let body = match dialog {
                Dialog::Browse => view! { <Browse/> }.into_any(),
                Dialog::CreateRoom => view! { <CreateRoom/> }.into_any(),
                Dialog::NewDirect => view! { <NewDirect/> }.into_any(),
                Dialog::Invite => view! { <Invite/> }.into_any(),
                Dialog::Settings => view! { <Settings/> }.into_any(),
                Dialog::ConfirmDelete(seq) => view! {
                    <Confirm id="confirm-delete" title="Delete this message?"
                             text="It will be deleted for everyone. This cannot be undone."
                             action="Delete"
                             on_confirm=move || app.delete(seq)/>
                }
                .into_any(),
                Dialog::ConfirmLeave => view! {
                    <Confirm id="confirm-leave" title="Leave this room?"
                             text="You will stop getting its messages. A private room needs a new invite to come back."
                             action="Leave"
                             on_confirm=move || leave(app)/>
                }
                .into_any(),
            };
            view! {
                <div class="dialog-backdrop" on:click=move |_| app.dialog.set(None)></div>
                <div class="dialog" role="dialog" aria-modal="true" aria-labelledby="dialog-title"
                     on:keydown=move |ev: leptos::ev::KeyboardEvent| {
                         if ev.key() == "Escape" {
                             ev.prevent_default();
                             app.dialog.set(None);
                         }
                     }>
                    {body}
                </div>
            }
        })
    }
}

fn leave(app: App) {
    let Some(room_id) = app.open.get_untracked() else {
        return;
    };
    spawn_local(async move {
        match api::leave(room_id).await {
            Ok(()) => {
                app.close_room();
                app.reload_rooms();
            }
            Err(failure) => app.failed(&failure),
        }
    });
}

/// After a room was joined or created: reload the list, then open it.
fn open_new(app: App, room_id: RoomId) {
    app.dialog.set(None);
    spawn_local(async move {
        if let Ok(list) = api::my_rooms().await {
            app.rooms.update(|r| r.load(list));
            app.rooms_loaded.set(true);
        }
        app.open_room(room_id);
        browser::focus_id("composer");
    });
}

#[component]
fn Header(title: &'static str) -> impl IntoView {
    let app = app();
    view! {
        <div class="dialog-head">
            <h2 id="dialog-title">{title}</h2>
            <button class="icon-button" type="button" aria-label="Close"
                    on:click=move |_| app.dialog.set(None)>"✕"</button>
        </div>
    }
}

#[component]
fn Browse() -> impl IntoView {
    let app = app();
    let query = RwSignal::new(String::new());
    let results = RwSignal::new(None::<Result<Vec<Room>, String>>);
    let search = move || {
        let q = query.get_untracked();
        spawn_local(async move {
            let found = api::search_rooms(&q).await.map_err(|f| f.plain());
            // Only the answer to what the box says now.
            if query.get_untracked() == q {
                results.set(Some(found));
            }
        });
    };
    search();
    let join = move |room_id: RoomId| {
        spawn_local(async move {
            match api::join(room_id).await {
                Ok(_) => open_new(app, room_id),
                Err(failure) => results.set(Some(Err(failure.plain()))),
            }
        });
    };
    view! {
        <div id="browse-dialog">
            <Header title="Browse public rooms"/>
            <label for="dialog-first">"Search by name"</label>
            <input id="dialog-first" type="search" autocomplete="off"
                   prop:value=move || query.get()
                   on:input=move |ev| {
                       query.set(event_target_value(&ev));
                       search();
                   }/>
            <div class="browse-results" role="status">
                {move || match results.get() {
                    None => view! { <p class="empty">"Searching…"</p> }.into_any(),
                    Some(Err(text)) => view! { <p class="form-error">{text}</p> }.into_any(),
                    Some(Ok(rooms)) if rooms.is_empty() => view! {
                        <p class="empty">"No public room has that name. You can create it."</p>
                    }.into_any(),
                    Some(Ok(rooms)) => view! {
                        <ul class="browse-list">
                            {rooms.into_iter().map(|room| {
                                let room_id = room.room_id;
                                let member = app.rooms.with_untracked(|r| r.get(room_id).is_some());
                                view! {
                                    <li class="browse-room" data-name=room.name.clone()>
                                        <span class="room-name">{format!("# {}", room.name)}</span>
                                        {if member {
                                            view! {
                                                <button class="open-room" type="button"
                                                        on:click=move |_| open_new(app, room_id)>"Open"</button>
                                            }.into_any()
                                        } else {
                                            view! {
                                                <button class="join-room primary" type="button"
                                                        on:click=move |_| join(room_id)>"Join"</button>
                                            }.into_any()
                                        }}
                                    </li>
                                }
                            }).collect_view()}
                        </ul>
                    }.into_any(),
                }}
            </div>
        </div>
    }
}

#[component]
fn CreateRoom() -> impl IntoView {
    let app = app();
    let name = RwSignal::new(String::new());
    let private = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let kind = if private.get_untracked() {
            RoomKind::Private
        } else {
            RoomKind::Public
        };
        let room_name = name.get_untracked().trim().to_owned();
        if let Err(invalid) = chat_protocol::api::validate_room(&room_name) {
            error.set(Some(words::error(invalid.code, &invalid.message)));
            return;
        }
        spawn_local(async move {
            match api::create_room(&room_name, kind).await {
                Ok(room) => open_new(app, room.room_id),
                Err(failure) => error.set(Some(failure.plain())),
            }
        });
    };
    view! {
        <form id="create-dialog" on:submit=submit>
            <Header title="Create a room"/>
            <label for="dialog-first">"Room name"</label>
            <input id="dialog-first" autocomplete="off" aria-describedby="create-error"
                   prop:value=move || name.get()
                   on:input=move |ev| name.set(event_target_value(&ev))/>
            <fieldset class="choice">
                <legend>"Who can join"</legend>
                <label>
                    <input type="radio" name="visibility" id="create-public"
                           prop:checked=move || !private.get()
                           on:change=move |_| private.set(false)/>
                    " Public: anyone can find and join it"
                </label>
                <label>
                    <input type="radio" name="visibility" id="create-private"
                           prop:checked=move || private.get()
                           on:change=move |_| private.set(true)/>
                    " Private: only people you invite"
                </label>
            </fieldset>
            <p id="create-error" class="form-error" role="alert">{move || error.get()}</p>
            <div class="dialog-actions">
                <button type="button" on:click=move |_| app.dialog.set(None)>"Cancel"</button>
                <button id="create-submit" class="primary" type="submit">"Create room"</button>
            </div>
        </form>
    }
}

/// A form's error is about what the field said: it goes once the field says something else.
fn clear_on_change(field: RwSignal<String>, error: RwSignal<Option<String>>) {
    Effect::new(move |previous: Option<String>| {
        let now = field.get();
        if previous.is_some_and(|previous| previous != now) {
            error.set(None);
        }
        now
    });
}

fn my_username(app: App) -> String {
    app.me.with_untracked(|me| {
        me.as_ref()
            .map(|profile| profile.username.clone())
            .unwrap_or_default()
    })
}

/// Who an invitation need not suggest: the open room's members, the user among them.
fn members_and_me(app: App) -> Vec<String> {
    let mut names: Vec<String> = app.members.with_untracked(|members| {
        members
            .iter()
            .map(|member| member.username.clone())
            .collect()
    });
    names.push(my_username(app));
    names
}

#[component]
fn NewDirect() -> impl IntoView {
    let app = app();
    let username = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    clear_on_change(username, error);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let who = username.get_untracked().trim().to_owned();
        if who.is_empty() {
            error.set(Some(
                "Enter the user name of the person to write to.".to_owned(),
            ));
            return;
        }
        spawn_local(async move {
            match api::direct(&who).await {
                Ok(room) => open_new(app, room.room_id),
                Err(failure) => error.set(Some(failure.plain())),
            }
        });
    };
    view! {
        <form id="direct-dialog" on:submit=submit>
            <Header title="New direct message"/>
            <label for="dialog-first">"User name or display name"</label>
            <UserPicker name="direct" value=username described_by="direct-error"
                        hidden=move || vec![my_username(app)]/>
            <p id="direct-error" class="form-error" role="alert">{move || error.get()}</p>
            <div class="dialog-actions">
                <button type="button" on:click=move |_| app.dialog.set(None)>"Cancel"</button>
                <button id="direct-submit" class="primary" type="submit">"Start conversation"</button>
            </div>
        </form>
    }
}

#[component]
fn Invite() -> impl IntoView {
    let app = app();
    let username = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let done = RwSignal::new(None::<String>);
    clear_on_change(username, error);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let who = username.get_untracked().trim().to_owned();
        let Some(room_id) = app.open.get_untracked() else {
            return;
        };
        if who.is_empty() {
            error.set(Some(
                "Enter the user name of the person to invite.".to_owned(),
            ));
            return;
        }
        error.set(None);
        done.set(None);
        spawn_local(async move {
            match api::invite(room_id, &who).await {
                Ok(()) => {
                    done.set(Some(format!("{who} is now a member.")));
                    username.set(String::new());
                    app.load_members(room_id);
                }
                Err(failure) => error.set(Some(failure.plain())),
            }
        });
    };
    view! {
        <form id="invite-dialog" on:submit=submit>
            <Header title="Invite someone"/>
            <label for="dialog-first">"User name or display name"</label>
            <UserPicker name="invite" value=username described_by="invite-error"
                        hidden=move || members_and_me(app)/>
            <p id="invite-error" class="form-error" role="alert">{move || error.get()}</p>
            <p id="invite-done" class="form-ok" role="status">{move || done.get()}</p>
            <div class="dialog-actions">
                <button type="button" on:click=move |_| app.dialog.set(None)>"Close"</button>
                <button id="invite-submit" class="primary" type="submit">"Invite"</button>
            </div>
        </form>
    }
}

#[component]
fn Settings() -> impl IntoView {
    let app = app();
    let display = RwSignal::new(app.me.with_untracked(|p| {
        p.as_ref()
            .map(|p| p.display_name.clone())
            .unwrap_or_default()
    }));
    let profile_state = RwSignal::new(None::<Result<String, String>>);
    let current = RwSignal::new(String::new());
    let new = RwSignal::new(String::new());
    let password_state = RwSignal::new(None::<Result<String, String>>);
    let save_profile = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let update = ProfileUpdate {
            display_name: Some(display.get_untracked().trim().to_owned()),
            ..ProfileUpdate::default()
        };
        spawn_local(async move {
            match api::update_profile(&update).await {
                Ok(profile) => {
                    app.me.set(Some(profile));
                    profile_state.set(Some(Ok("Saved.".to_owned())));
                }
                Err(failure) => profile_state.set(Some(Err(failure.plain()))),
            }
        });
    };
    let change_password = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let (old, fresh) = (current.get_untracked(), new.get_untracked());
        if chat_protocol::api::validate_password(&fresh).is_err() {
            password_state.set(Some(Err(words::error(
                chat_protocol::ErrorCode::InvalidPassword,
                "",
            ))));
            return;
        }
        spawn_local(async move {
            match api::change_password(&old, &fresh).await {
                Ok(()) => {
                    current.set(String::new());
                    new.set(String::new());
                    password_state.set(Some(Ok(
                        "Password changed. Your other sessions were signed out.".to_owned(),
                    )));
                }
                Err(failure) => password_state.set(Some(Err(failure.plain()))),
            }
        });
    };
    let state_view = |state: RwSignal<Option<Result<String, String>>>| {
        move || match state.get() {
            Some(Ok(text)) => view! { <p class="form-ok" role="status">{text}</p> }.into_any(),
            Some(Err(text)) => view! { <p class="form-error" role="alert">{text}</p> }.into_any(),
            None => ().into_any(),
        }
    };
    let log_out = move |_| {
        spawn_local(async move {
            let _ = api::logout().await;
            app.signed_out(None);
        });
    };
    let theme = move || match app.dark.get() {
        Some(true) => "dark",
        Some(false) => "light",
        None => "system",
    };
    view! {
        <div id="settings-dialog">
            <Header title="Settings"/>
            <form class="settings-section" on:submit=save_profile>
                <h3>"Profile"</h3>
                <label for="dialog-first">"Display name"</label>
                <input id="dialog-first" autocomplete="nickname"
                       prop:value=move || display.get()
                       on:input=move |ev| display.set(event_target_value(&ev))/>
                {state_view(profile_state)}
                <button id="save-profile" type="submit">"Save name"</button>
            </form>
            <form class="settings-section" on:submit=change_password>
                <h3>"Password"</h3>
                <label for="current-password">"Current password"</label>
                <input id="current-password" type="password" autocomplete="current-password"
                       prop:value=move || current.get()
                       on:input=move |ev| current.set(event_target_value(&ev))/>
                <label for="new-password">"New password"</label>
                <input id="new-password" type="password" autocomplete="new-password"
                       aria-describedby="new-password-rule"
                       prop:value=move || new.get()
                       on:input=move |ev| new.set(event_target_value(&ev))/>
                <p id="new-password-rule" class="hint">{words::password_rule()}</p>
                {state_view(password_state)}
                <button id="change-password" type="submit">"Change password"</button>
            </form>
            <div class="settings-section">
                <h3>"Appearance and notifications"</h3>
                <label for="theme-select">"Theme"</label>
                <select id="theme-select" prop:value=theme
                        on:change=move |ev| app.set_dark(match event_target_value(&ev).as_str() {
                            "dark" => Some(true),
                            "light" => Some(false),
                            _ => None,
                        })>
                    <option value="system">"Follow the system"</option>
                    <option value="light">"Light"</option>
                    <option value="dark">"Dark"</option>
                </select>
                <button id="enable-notifications" type="button"
                        on:click=move |_| browser::ask_for_notifications()>
                    "Notify me of direct messages when this tab is hidden"
                </button>
            </div>
            <div class="dialog-actions">
                <button id="logout-button" class="danger" type="button" on:click=log_out>"Log out"</button>
                <button type="button" on:click=move |_| app.dialog.set(None)>"Close"</button>
            </div>
        </div>
    }
}

#[component]
fn Confirm(
    id: &'static str,
    title: &'static str,
    text: &'static str,
    action: &'static str,
    on_confirm: impl Fn() + Send + Sync + 'static,
) -> impl IntoView {
    let app = app();
    view! {
        <div id=id>
            <h2 id="dialog-title">{title}</h2>
            <p>{text}</p>
            <div class="dialog-actions">
                <button id="dialog-first" type="button" on:click=move |_| app.dialog.set(None)>"Cancel"</button>
                <button class="danger confirm" type="button" on:click=move |_| {
                    on_confirm();
                    app.dialog.set(None);
                }>{action}</button>
            </div>
        </div>
    }
}
