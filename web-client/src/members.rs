//! The member list of the open room, with each member's presence.
//!
//! `<li class="member" data-user-id="7" data-username="ada" data-presence="online">` holding
//! `<span class="presence">` (the dot) and `<span class="name">`. Loaded over REST when a room
//! opens, then kept current by `presence` frames.

use chat_protocol::api::Member;
use chat_protocol::{PresenceStatus, UserId};
use std::collections::HashMap;
use wasm_bindgen::JsValue;
use web_sys::{Document, Element};

pub struct MemberList {
    document: Document,
    list: Element,
    items: HashMap<UserId, Element>,
}

impl MemberList {
    pub fn new(document: Document, list: Element) -> MemberList {
        MemberList {
            document,
            list,
            items: HashMap::new(),
        }
    }

    pub fn clear(&mut self) {
        self.list.set_text_content(None);
        self.items.clear();
    }

    /// Shows these members, by display name, replacing the list.
    pub fn show(&mut self, members: &[Member]) -> Result<(), JsValue> {
        self.clear();
        let mut members: Vec<&Member> = members.iter().collect();
        members.sort_by_key(|member| member.display_name.to_lowercase());
        for member in members {
            let item = self.document.create_element("li")?;
            item.set_class_name("member");
            item.set_attribute("data-user-id", &member.user_id.to_string())?;
            item.set_attribute("data-username", &member.username)?;
            item.set_attribute("title", &format!("@{}", member.username))?;
            for (class, text) in [("presence", ""), ("name", member.display_name.as_str())] {
                let span = self.document.create_element("span")?;
                span.set_class_name(class);
                span.set_text_content(Some(text));
                item.append_child(&span)?;
            }
            self.list.append_child(&item)?;
            self.items.insert(member.user_id, item);
            self.set_presence(member.user_id, member.presence)?;
        }
        Ok(())
    }

    /// Updates a member's presence. Returns false for a user not in the list (someone who
    /// joined since it was loaded), which the caller answers by loading it again.
    pub fn set_presence(&self, user_id: UserId, status: PresenceStatus) -> Result<bool, JsValue> {
        let Some(item) = self.items.get(&user_id) else {
            return Ok(false);
        };
        item.set_attribute("data-presence", status.as_str())?;
        if let Some(dot) = item.query_selector(".presence")? {
            dot.set_attribute("title", status.as_str())?;
        }
        Ok(true)
    }
}
