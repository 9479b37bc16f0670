//! What PostgreSQL holds after a run, read with `psql` (the tool needs no database driver).

use anyhow::{bail, Context};
use std::collections::{HashMap, HashSet};

/// The rooms' stored messages, read with `psql`.
pub struct Stored {
    /// (sender id, client message id) of every stored message.
    pub ids: HashSet<(i64, String)>,
    /// Newest sequence number per room.
    pub max_seq: HashMap<i64, i64>,
}

pub async fn stored_messages(database_url: &str, room_ids: &[i64]) -> anyhow::Result<Stored> {
    let list: Vec<String> = room_ids.iter().map(i64::to_string).collect();
    let query = format!(
        "SELECT room_id, seq, sender_id, client_msg_id FROM messages WHERE room_id IN ({})",
        list.join(",")
    );
    let output = tokio::process::Command::new("psql")
        .args([database_url, "-tA", "-F", "\t", "-c", &query])
        .output()
        .await
        .context("cannot run psql")?;
    if !output.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let mut stored = Stored {
        ids: HashSet::new(),
        max_seq: HashMap::new(),
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if let [room, seq, sender, id] = fields[..] {
            let (Ok(room), Ok(seq), Ok(sender)) = (room.parse(), seq.parse(), sender.parse())
            else {
                continue;
            };
            let max = stored.max_seq.entry(room).or_insert(0);
            *max = (*max).max(seq);
            stored.ids.insert((sender, id.to_owned()));
        }
    }
    Ok(stored)
}
