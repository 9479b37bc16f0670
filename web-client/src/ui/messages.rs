//! The conversation: the message list (day separators, grouping, the new-messages line,
//! history loaded by scrolling up with the view anchored, a jump-to-latest button) and the
//! composer (Enter sends, Shift+Enter starts a new line, ↑ edits the last message).

use super::app;
use crate::browser;
use crate::markdown::{self, Block, Inline};
use crate::state::{App, Dialog, Link};
use crate::timeline::{Outgoing, Row, SendState};
use crate::words;
use chat_protocol::api::Role;
use chat_protocol::{limits, ChatMessage, Seq};
use leptos::prelude::*;
use wasm_bindgen::JsCast;

/// How close to the bottom (in pixels) still counts as reading the newest messages.
const AT_BOTTOM_SLACK: i32 = 40;
/// How close to the top loads the page before.
const NEAR_TOP: i32 = 120;

fn row_key(row: &Row) -> String {
    match row {
        Row::Day { key, .. } => format!("day-{key}"),
        Row::NewMessages => "new".to_owned(),
        // A changed message gets a new key, so its row is drawn again.
        Row::Message { message, continued } => format!(
            "m{}-{:?}-{}-{}",
            message.seq, message.edited_at_ms, message.deleted, continued
        ),
        Row::Outgoing(o) => format!("o{}-{:?}", o.client_msg_id, o.state),
    }
}

/// What the message list showed: its scroll height and position, its oldest message, and the
/// first message whose text was in view with that text's distance from the list's top.
#[derive(Clone, Copy, Default)]
struct SeenView {
    height: i32,
    top: i32,
    oldest: Option<Seq>,
    anchor: Option<(Seq, f64)>,
}

impl SeenView {
    fn of(el: &web_sys::HtmlDivElement, oldest: Option<Seq>, find_anchor: bool) -> SeenView {
        SeenView {
            height: el.scroll_height(),
            top: el.scroll_top(),
            oldest,
            anchor: if find_anchor {
                first_text_in_view(el)
            } else {
                None
            },
        }
    }
}

/// The first message whose text reaches into the list's box, and how far below the box's top
/// its text starts (negative: partly scrolled out).
fn first_text_in_view(el: &web_sys::HtmlDivElement) -> Option<(Seq, f64)> {
    let top = el.get_bounding_client_rect().top();
    let rows = el.query_selector_all("li.message[data-seq]").ok()?;
    (0..rows.length())
        .filter_map(|index| rows.item(index)?.dyn_into::<web_sys::Element>().ok())
        .find_map(|row| {
            let text = row
                .query_selector(".body")
                .ok()??
                .get_bounding_client_rect();
            if text.bottom() <= top {
                return None;
            }
            let seq = row.get_attribute("data-seq")?.parse().ok().map(Seq)?;
            Some((seq, text.top() - top))
        })
}

/// How far below the list's top the text of message `seq` starts now.
fn text_offset(el: &web_sys::HtmlDivElement, seq: Seq) -> Option<f64> {
    let text = el
        .query_selector(&format!("li.message[data-seq='{}'] .body", seq.0))
        .ok()??;
    Some(text.get_bounding_client_rect().top() - el.get_bounding_client_rect().top())
}

#[component]
pub fn MessageList() -> impl IntoView {
    let app = app();
    let list: NodeRef<leptos::html::Div> = NodeRef::new();
    let at_bottom = RwSignal::new(true);
    // The view before the last change, to keep it still when older messages are put above.
    let before = StoredValue::new(SeenView::default());
    let my_id = move || app.me.with(|p| p.as_ref().map(|p| p.user_id));
    let is_owner = Memo::new(move |_| {
        let open = app.open.get();
        app.rooms.with(|r| {
            open.and_then(|id| r.get(id))
                .is_some_and(|e| e.room.role == Some(Role::Owner))
        })
    });

    let rows = Memo::new(move |_| app.timeline.with(|t| t.rows(my_id(), browser::day_of)));

    Effect::new(move |_| {
        let oldest = app.timeline.with(|t| t.oldest_seq());
        rows.track();
        let Some(el) = list.get() else {
            return;
        };
        let seen = before.get_value();
        if seen.oldest.is_some() && oldest < seen.oldest && !at_bottom.get_untracked() {
            // Older messages came in above: everything below them keeps its place...
            el.set_scroll_top(seen.top + (el.scroll_height() - seen.height));
            // ...and so does the text being read, even where its own row changed (a message
            // that now follows one of the same sender loses its header and some padding).
            if let Some((seq, offset)) = seen.anchor {
                if let Some(now) = text_offset(&el, seq) {
                    el.set_scroll_top(el.scroll_top() + (now - offset).round() as i32);
                }
            }
        } else if at_bottom.get_untracked() {
            el.set_scroll_top(el.scroll_height());
        }
        before.set_value(SeenView::of(&el, oldest, false));
    });

    let on_scroll = move |_| {
        let Some(el) = list.get() else {
            return;
        };
        let bottom = el.scroll_height() - el.scroll_top() - el.client_height() <= AT_BOTTOM_SLACK;
        if bottom != at_bottom.get_untracked() {
            at_bottom.set(bottom);
        }
        let oldest = app.timeline.with_untracked(|t| t.oldest_seq());
        // Older messages come in only while near the top or loading: only then is the text
        // being read worth finding.
        let near_top = el.scroll_top() < NEAR_TOP || app.loading_history.get_untracked();
        before.set_value(SeenView::of(&el, oldest, near_top));
        if el.scroll_top() < NEAR_TOP {
            app.load_older();
        }
        if bottom {
            app.mark_read();
        }
    };
    let jump = move |_| {
        if let Some(el) = list.get() {
            el.set_scroll_top(el.scroll_height());
            at_bottom.set(true);
        }
        browser::focus_id("composer");
    };

    let top = move || {
        let (start, empty) = app.timeline.with(|t| (t.reached_start, t.is_empty()));
        let loading = app.loading_history.get();
        if app.open.get().is_none() {
            let text = if app.rooms_loaded.get() {
                "Open a room from the list, browse public rooms, or create one."
            } else {
                "Loading your rooms…"
            };
            return view! { <p class="empty-state">{text}</p> }.into_any();
        }
        if loading {
            return view! { <p class="history-state" role="status">"Loading messages…"</p> }
                .into_any();
        }
        if start && empty {
            return view! { <p class="empty-state">"No messages yet. Say hello!"</p> }.into_any();
        }
        if start {
            return view! { <p class="history-state">"This is the start of the conversation."</p> }
                .into_any();
        }
        view! {
            <button id="load-older" class="link-button history-state" type="button"
                    on:click=move |_| {
                        if let Some(el) = list.get_untracked() {
                            let oldest = app.timeline.with_untracked(|t| t.oldest_seq());
                            before.set_value(SeenView::of(&el, oldest, true));
                        }
                        app.load_older();
                    }>"Load older messages"</button>
        }
        .into_any()
    };

    view! {
        <div class="conversation">
            <div id="messages" class="messages" node_ref=list on:scroll=on_scroll
                 tabindex="0" role="region" aria-label="Messages">
                {top}
                <ol class="message-list">
                    <For each=move || rows.get() key=row_key
                         children=move |row| render_row(app, row, is_owner)/>
                </ol>
            </div>
            <button id="jump-latest" type="button"
                    class=move || if at_bottom.get() { "jump hidden" } else { "jump" }
                    on:click=jump>"Jump to latest ↓"</button>
        </div>
    }
}

fn render_row(app: App, row: Row, is_owner: Memo<bool>) -> AnyView {
    match row {
        Row::Day { at_ms, .. } => view! {
            <li class="day-separator"><span>{browser::day_of(at_ms)}</span></li>
        }
        .into_any(),
        Row::NewMessages => view! {
            <li class="new-line" id="new-messages-line"><span>"New messages"</span></li>
        }
        .into_any(),
        Row::Message { message, continued } => render_message(app, message, continued, is_owner),
        Row::Outgoing(outgoing) => render_outgoing(app, outgoing),
    }
}

fn render_message(
    app: App,
    message: ChatMessage,
    continued: bool,
    is_owner: Memo<bool>,
) -> AnyView {
    let own = app.my_id() == Some(message.sender_id);
    let seq = message.seq;
    let (short, full) = browser::time_of(message.sent_at_ms);
    let mut class = String::from("message");
    for (on, name) in [
        (own, " own"),
        (continued, " continued"),
        (message.deleted, " deleted"),
        (
            message.edited_at_ms.is_some() && !message.deleted,
            " edited",
        ),
    ] {
        if on {
            class.push_str(name);
        }
    }
    let editing = move || app.editing.get() == Some(seq);
    let body_text = message.body.clone();
    let deleted = message.deleted;
    let body = move || {
        if deleted {
            view! { <div class="body">"message deleted"</div> }.into_any()
        } else if editing() {
            view! { <Editor seq=seq body=body_text.clone()/> }.into_any()
        } else {
            view! { <div class="body">{render_blocks(markdown::parse(&body_text))}</div> }
                .into_any()
        }
    };
    let controls = move || {
        let can_delete = own || is_owner.get();
        (!deleted && !editing() && can_delete).then(|| {
            view! {
                <div class="controls">
                    {own.then(|| view! {
                        <button class="edit" type="button" aria-label="Edit message"
                                on:click=move |_| app.editing.set(Some(seq))>"Edit"</button>
                    })}
                    <button class="delete" type="button" aria-label="Delete message"
                            on:click=move |_| app.dialog.set(Some(Dialog::ConfirmDelete(seq)))>"Delete"</button>
                </div>
            }
        })
    };
    let edited = message.edited_at_ms.is_some() && !deleted;
    view! {
        <li class=class data-seq=seq.to_string()>
            {(!continued).then(|| view! {
                <div class="meta">
                    <span class="sender">{message.sender_name.clone()}</span>
                    <time class="time" title=full.clone()>{short.clone()}</time>
                </div>
            })}
            {continued.then(|| view! { <time class="time side" title=full.clone()>{short.clone()}</time> })}
            {body}
            {edited.then(|| view! { <span class="edited-mark">"(edited)"</span> })}
            {controls}
        </li>
    }
    .into_any()
}

fn render_outgoing(app: App, outgoing: Outgoing) -> AnyView {
    let Outgoing {
        client_msg_id,
        body,
        state,
        ..
    } = outgoing;
    let (class, status) = match &state {
        SendState::Pending => ("message own outgoing pending", "Sending…".to_owned()),
        SendState::Failed(why) => ("message own outgoing failed", format!("Not sent. {why}")),
    };
    let failed = matches!(state, SendState::Failed(_));
    let retry_id = client_msg_id.clone();
    let discard_id = client_msg_id.clone();
    view! {
        <li class=class data-client-id=client_msg_id.0.clone()>
            <div class="body">{render_blocks(markdown::parse(&body))}</div>
            <div class="send-state">
                <span class="status-text">{status}</span>
                {failed.then(|| view! {
                    <button class="retry" type="button"
                            on:click=move |_| app.retry(retry_id.clone())>"Retry"</button>
                    <button class="discard" type="button"
                            on:click=move |_| app.discard(discard_id.clone())>"Discard"</button>
                })}
            </div>
        </li>
    }
    .into_any()
}

/// Markdown blocks as DOM nodes; text stays text.
pub fn render_blocks(blocks: Vec<Block>) -> AnyView {
    blocks
        .into_iter()
        .map(|block| match block {
            Block::Paragraph(lines) => view! { <p>{render_lines(lines)}</p> }.into_any(),
            Block::Code(code) => view! { <pre><code>{code}</code></pre> }.into_any(),
            Block::Quote(inner) => {
                view! { <blockquote>{render_blocks(inner)}</blockquote> }.into_any()
            }
        })
        .collect_view()
        .into_any()
}

fn render_lines(lines: Vec<Vec<Inline>>) -> AnyView {
    lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            view! {
                {(i > 0).then(|| view! { <br/> })}
                {render_inlines(line)}
            }
        })
        .collect_view()
        .into_any()
}

fn render_inlines(items: Vec<Inline>) -> AnyView {
    items
        .into_iter()
        .map(|item| match item {
            Inline::Text(text) => text.into_any(),
            Inline::Emphasis(inner) => view! { <em>{render_inlines(inner)}</em> }.into_any(),
            Inline::Strong(inner) => view! { <strong>{render_inlines(inner)}</strong> }.into_any(),
            Inline::Code(code) => view! { <code>{code}</code> }.into_any(),
            Inline::Link { text, href } => view! {
                <a href=href target="_blank" rel="noopener noreferrer">{text}</a>
            }
            .into_any(),
        })
        .collect_view()
        .into_any()
}

/// Editing one of the user's messages in place: Enter saves, Escape cancels, and focus goes
/// back to the composer either way.
#[component]
fn Editor(seq: Seq, body: String) -> impl IntoView {
    let app = app();
    let text = RwSignal::new(body);
    let area: NodeRef<leptos::html::Textarea> = NodeRef::new();
    Effect::new(move |_| {
        if let Some(el) = area.get() {
            let _ = el.focus();
            let len = el.value().len() as u32;
            let _ = el.set_selection_range(len, len);
        }
    });
    let save = move || {
        app.save_edit(seq, text.get_untracked());
        browser::focus_id("composer");
    };
    let cancel = move || {
        app.editing.set(None);
        browser::focus_id("composer");
    };
    view! {
        <div class="editor">
            <textarea class="edit-input" aria-label="Edit message" node_ref=area rows="2"
                      prop:value=move || text.get()
                      on:input=move |ev| text.set(event_target_value(&ev))
                      on:keydown=move |ev: leptos::ev::KeyboardEvent| {
                          if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() {
                              ev.prevent_default();
                              save();
                          } else if ev.key() == "Escape" {
                              ev.prevent_default();
                              cancel();
                          }
                      }></textarea>
            <div class="editor-actions">
                <span class="hint">"Enter to save, Escape to cancel"</span>
                <button class="cancel-edit" type="button" on:click=move |_| cancel()>"Cancel"</button>
                <button class="save-edit primary" type="button" on:click=move |_| save()>"Save"</button>
            </div>
        </div>
    }
}

#[component]
pub fn Composer() -> impl IntoView {
    let app = app();
    let text = RwSignal::new(String::new());
    let area: NodeRef<leptos::html::Textarea> = NodeRef::new();
    let live = move || app.link.get() == Link::Live && app.open.get().is_some();
    let room_name = move || {
        let open = app.open.get();
        app.rooms.with(|r| {
            open.and_then(|id| r.get(id))
                .map(|e| words::room_title(&e.room.name, e.is_direct(), &app.my_username()))
                .unwrap_or_default()
        })
    };
    let chars = move || text.with(|t| t.chars().count());
    let over = move || chars() > limits::MAX_BODY_CHARS;

    // The box grows with its text, up to a limit set in CSS.
    let fit = move || {
        if let Some(el) = area.get_untracked() {
            let style = web_sys::HtmlElement::style(&el);
            let _ = style.set_property("height", "auto");
            // The scroll height leaves out the borders, which the box's height includes.
            let borders = el.offset_height() - el.client_height();
            let _ = style.set_property("height", &format!("{}px", el.scroll_height() + borders));
        }
    };
    let send = move || {
        if over() {
            return;
        }
        if app.send_message(text.get_untracked()) {
            text.set(String::new());
            // Empty the box now: the bound value updates after this, and the height is
            // measured from what the box holds.
            if let Some(el) = area.get_untracked() {
                el.set_value("");
            }
            fit();
        }
    };
    let on_keydown = move |ev: leptos::ev::KeyboardEvent| {
        if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() {
            ev.prevent_default();
            send();
        } else if ev.key() == "ArrowUp" && text.with_untracked(String::is_empty) {
            let me = app.my_id();
            let last = me.and_then(|me| {
                app.timeline
                    .with_untracked(|t| t.last_own(me).map(|m| m.seq))
            });
            if let Some(seq) = last {
                ev.prevent_default();
                app.editing.set(Some(seq));
            }
        }
    };
    view! {
        <form id="composer-form" class="composer" on:submit=move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            send();
        }>
            <label for="composer" class="visually-hidden">
                {move || format!("Message {}", room_name())}
            </label>
            <textarea id="composer" node_ref=area rows="1"
                      placeholder=move || if live() {
                          format!("Message {}", room_name())
                      } else if app.open.get().is_none() {
                          "Open a room to write".to_owned()
                      } else {
                          "Sending is paused".to_owned()
                      }
                      aria-describedby="composer-help composer-counter"
                      disabled=move || !live()
                      prop:value=move || text.get()
                      on:input=move |ev| {
                          text.set(event_target_value(&ev));
                          fit();
                          app.typed();
                      }
                      on:keydown=on_keydown></textarea>
            <button id="send-button" class="primary" type="submit"
                    disabled=move || !live() || over() || text.with(|t| t.trim().is_empty())>"Send"</button>
            <p id="composer-help" class="visually-hidden">
                "Enter sends, Shift+Enter starts a new line, Up arrow edits your last message."
            </p>
            <p id="composer-counter" class=move || if over() { "counter over" } else { "counter" }>
                {move || words::counter(chars()).unwrap_or_default()}
            </p>
        </form>
    }
}
