//! "ada is typing…": who is typing in the open room, each until their `typing` frame expires
//! (unless renewed), or until their message arrives.

use crate::dom;
use chat_protocol::UserId;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use web_sys::Element;

/// Who is typing, and until when (browser clock, milliseconds).
type Typists = BTreeMap<UserId, (String, f64)>;

/// The indicator line. Its state is shared with the timers that hide expired names.
pub struct TypingIndicator {
    line: Element,
    typists: Rc<RefCell<Typists>>,
}

impl TypingIndicator {
    pub fn new(line: Element) -> TypingIndicator {
        TypingIndicator {
            line,
            typists: Rc::new(RefCell::new(BTreeMap::new())),
        }
    }

    /// `name` is typing for the next `expires_in_ms`.
    pub fn show(&self, user_id: UserId, name: &str, expires_in_ms: u64) {
        let until = dom::now_ms() + expires_in_ms as f64;
        self.typists
            .borrow_mut()
            .insert(user_id, (name.to_owned(), until));
        render(&self.line, &self.typists);
        let (line, typists) = (self.line.clone(), Rc::clone(&self.typists));
        // A little after the expiry, so that the name is gone when the timer runs.
        let delay = u32::try_from(expires_in_ms)
            .unwrap_or(u32::MAX)
            .saturating_add(50);
        dom::after(delay, move || render(&line, &typists));
    }

    /// The user's message arrived (or they left): they are no longer typing.
    pub fn stop(&self, user_id: UserId) {
        self.typists.borrow_mut().remove(&user_id);
        render(&self.line, &self.typists);
    }

    pub fn clear(&self) {
        self.typists.borrow_mut().clear();
        render(&self.line, &self.typists);
    }
}

/// Drops expired names and shows the rest.
fn render(line: &Element, typists: &RefCell<Typists>) {
    let now = dom::now_ms();
    let mut typists = typists.borrow_mut();
    typists.retain(|_, (_, until)| *until > now);
    let names: Vec<&str> = typists.values().map(|(name, _)| name.as_str()).collect();
    let text = match names.as_slice() {
        [] => String::new(),
        [one] => format!("{one} is typing…"),
        [one, two] => format!("{one} and {two} are typing…"),
        _ => "several people are typing…".to_owned(),
    };
    line.set_text_content(Some(&text));
}
