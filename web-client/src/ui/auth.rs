//! Sign in or create an account. The rules are shown under each field before anything is
//! submitted; errors appear next to the field they are about, in plain words.

use super::app;
use crate::api;
use crate::words;
use chat_protocol::api::{validate_password, validate_username};
use chat_protocol::ErrorCode;
use leptos::prelude::*;
use leptos::task::spawn_local;

#[component]
pub fn AuthScreen() -> impl IntoView {
    let app = app();
    let registering = RwSignal::new(false);
    let username = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let display_name = RwSignal::new(String::new());
    let username_error = RwSignal::new(None::<String>);
    let password_error = RwSignal::new(None::<String>);
    let form_error = RwSignal::new(app.notice.get_untracked());
    let busy = RwSignal::new(false);

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if busy.get_untracked() {
            return;
        }
        username_error.set(None);
        password_error.set(None);
        form_error.set(None);
        let register = registering.get_untracked();
        let name = username.get_untracked().trim().to_owned();
        let secret = password.get_untracked();
        if register {
            let mut bad = false;
            if validate_username(&name).is_err() {
                username_error.set(Some(words::error(ErrorCode::InvalidUsername, "")));
                bad = true;
            }
            if validate_password(&secret).is_err() {
                password_error.set(Some(words::error(ErrorCode::InvalidPassword, "")));
                bad = true;
            }
            if bad {
                return;
            }
        } else if name.is_empty() || secret.is_empty() {
            form_error.set(Some("Enter your user name and password.".to_owned()));
            return;
        }
        busy.set(true);
        let shown = display_name.get_untracked().trim().to_owned();
        spawn_local(async move {
            let result = if register {
                api::register(&name, &secret, (!shown.is_empty()).then_some(shown)).await
            } else {
                api::login(&name, &secret).await
            };
            busy.set(false);
            match result {
                Ok(profile) => {
                    app.notice.set(None);
                    app.signed_in(profile);
                }
                Err(failure) => {
                    let text = failure.plain();
                    match failure.code() {
                        Some(ErrorCode::InvalidUsername | ErrorCode::UsernameTaken) => {
                            username_error.set(Some(text))
                        }
                        Some(ErrorCode::InvalidPassword) => password_error.set(Some(text)),
                        _ => form_error.set(Some(text)),
                    }
                }
            }
        });
    };

    let switch = move |_| {
        registering.update(|r| *r = !*r);
        username_error.set(None);
        password_error.set(None);
        form_error.set(None);
    };

    view! {
        <main class="auth">
            <div class="auth-card">
                <h1 class="brand">"Chat"</h1>
                <h2 id="auth-heading">
                    {move || if registering.get() { "Create your account" } else { "Sign in" }}
                </h2>
                <form id="auth-form" class="auth-form" on:submit=submit novalidate=true
                      aria-labelledby="auth-heading">
                    <div class="field">
                        <label for="auth-username">"User name"</label>
                        <input id="auth-username" name="username" autocomplete="username"
                               spellcheck="false" autocapitalize="none" required=true
                               aria-describedby="username-rule username-error"
                               aria-invalid=move || username_error.with(Option::is_some).to_string()
                               prop:value=move || username.get()
                               on:input=move |ev| username.set(event_target_value(&ev))/>
                        <p id="username-rule" class="hint">
                            {move || registering.get().then(words::username_rule)}
                        </p>
                        <p id="username-error" class="field-error">
                            {move || username_error.get()}
                        </p>
                    </div>
                    {move || registering.get().then(|| view! {
                        <div class="field">
                            <label for="auth-display-name">"Display name (optional)"</label>
                            <input id="auth-display-name" name="display_name" autocomplete="nickname"
                                   prop:value=move || display_name.get()
                                   on:input=move |ev| display_name.set(event_target_value(&ev))/>
                        </div>
                    })}
                    <div class="field">
                        <label for="auth-password">"Password"</label>
                        <input id="auth-password" name="password" type="password" required=true
                               autocomplete=move || if registering.get() { "new-password" } else { "current-password" }
                               aria-describedby="password-rule password-error"
                               aria-invalid=move || password_error.with(Option::is_some).to_string()
                               prop:value=move || password.get()
                               on:input=move |ev| password.set(event_target_value(&ev))/>
                        <p id="password-rule" class="hint">
                            {move || registering.get().then(words::password_rule)}
                        </p>
                        <p id="password-error" class="field-error">
                            {move || password_error.get()}
                        </p>
                    </div>
                    <p id="auth-error" class="form-error" role="alert">{move || form_error.get()}</p>
                    <button id="auth-submit" class="primary wide" type="submit"
                            disabled=move || busy.get()>
                        {move || match (registering.get(), busy.get()) {
                            (_, true) => "Please wait…",
                            (true, false) => "Create account",
                            (false, false) => "Sign in",
                        }}
                    </button>
                </form>
                <p class="switch">
                    {move || if registering.get() { "Have an account? " } else { "New here? " }}
                    <button id="auth-switch" class="link-button" type="button" on:click=switch>
                        {move || if registering.get() { "Sign in" } else { "Create an account" }}
                    </button>
                </p>
            </div>
        </main>
    }
}
