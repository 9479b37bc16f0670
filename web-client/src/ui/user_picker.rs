//! The user name field of the invitation and direct-message dialogs, with suggestions as the
//! user types: an ARIA 1.2 combobox (a text box that controls a listbox; the option the arrow
//! keys point at is the box's `aria-activedescendant`, so focus never leaves the box). Up and
//! down move through the people found, Enter takes one, Escape closes the list (a second Escape
//! closes the dialog), a click or tap takes one too. The state is [`crate::picker::Picker`].

use crate::api;
use crate::browser;
use crate::picker::Picker;
use leptos::prelude::*;
use leptos::task::spawn_local;

/// How long typing must pause before the server is asked: one search per word, not per key.
const PAUSE_MS: u32 = 150;

/// The field, with id `dialog-first` (the dialog focuses it). `value` is what it says; people
/// whose user names `hidden` returns are never suggested. `name` prefixes the ids of the list
/// and its options; `described_by` names the dialog's error line.
#[component]
pub fn UserPicker(
    name: &'static str,
    value: RwSignal<String>,
    hidden: impl Fn() -> Vec<String> + Send + Sync + 'static,
    described_by: &'static str,
) -> impl IntoView {
    let picker = RwSignal::new(Picker::default());
    let hidden = StoredValue::new(hidden);
    let listbox_id = format!("{name}-suggestions");
    let option_id = move |index: usize| format!("{name}-option-{index}");

    let typed = move |text: String| {
        value.set(text.clone());
        let Some(query) = picker.try_update(|p| p.typed(&text)).flatten() else {
            return;
        };
        spawn_local(async move {
            browser::sleep(PAUSE_MS).await;
            if value.get_untracked().trim() != query {
                return;
            }
            // A failed search only means no suggestions: the name can still be typed in full.
            if let Ok(users) = api::search_users(&query).await {
                let hidden = hidden.with_value(|hidden| hidden());
                picker.update(|p| p.found(&query, users, &hidden));
            }
        });
    };
    let choose = move |index: usize| {
        if let Some(username) = picker.try_update(|p| p.choose(index)).flatten() {
            value.set(username);
        }
    };
    let on_keydown = move |ev: leptos::ev::KeyboardEvent| match ev.key().as_str() {
        "ArrowDown" => {
            ev.prevent_default();
            picker.update(Picker::next);
        }
        "ArrowUp" => {
            ev.prevent_default();
            picker.update(Picker::previous);
        }
        "Enter" => {
            // With an option pointed at, Enter takes it; otherwise it submits the form.
            if let Some(username) = picker.try_update(Picker::choose_active).flatten() {
                ev.prevent_default();
                value.set(username);
            }
        }
        "Escape" if picker.with_untracked(Picker::is_open) => {
            ev.prevent_default();
            ev.stop_propagation();
            picker.update(Picker::close);
        }
        _ => {}
    };
    let found_text = move || {
        picker.with(|p| match (p.is_open(), p.suggestions().len()) {
            (false, _) => String::new(),
            (true, 1) => "1 person found. Use the up and down arrows to choose.".to_owned(),
            (true, n) => format!("{n} people found. Use the up and down arrows to choose."),
        })
    };

    view! {
        <div class="picker">
            <input id="dialog-first" type="text" role="combobox" autocomplete="off"
                   spellcheck="false" autocapitalize="none"
                   aria-autocomplete="list"
                   aria-controls=listbox_id.clone()
                   aria-expanded=move || if picker.with(Picker::is_open) { "true" } else { "false" }
                   aria-activedescendant=move || picker.with(Picker::active).map(option_id)
                   aria-describedby=described_by
                   prop:value=move || value.get()
                   on:input=move |ev| typed(event_target_value(&ev))
                   on:keydown=on_keydown
                   on:blur=move |_| picker.update(Picker::close)/>
            <ul id=listbox_id role="listbox" class="suggestions" aria-label="People"
                hidden=move || !picker.with(Picker::is_open)>
                {move || {
                    let active = picker.with(Picker::active);
                    picker.with(|p| p.suggestions().to_vec())
                        .into_iter()
                        .enumerate()
                        .map(|(index, user)| {
                            let chosen = active == Some(index);
                            view! {
                                <li id=option_id(index) role="option" class="suggestion"
                                    class:active=chosen
                                    aria-selected=if chosen { "true" } else { "false" }
                                    data-username=user.username.clone()
                                    // Keeps focus in the box, so the blur does not close the
                                    // list before the click lands.
                                    on:mousedown=move |ev| ev.prevent_default()
                                    on:click=move |_| choose(index)>
                                    <span class="suggestion-name">{user.display_name}</span>
                                    <span class="suggestion-username">{format!("@{}", user.username)}</span>
                                </li>
                            }
                        })
                        .collect_view()
                }}
            </ul>
            <p class="visually-hidden" role="status">{found_text}</p>
        </div>
    }
}
