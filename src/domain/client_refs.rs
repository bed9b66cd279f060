//! The refs of a message's recent client writes, so a write sent again (a client that lost its
//! connection before the acknowledgement came, and resends) is applied once.
//!
//! A WebSocket `update_message` or `cancel` may carry a client `ref` (a short string). The
//! message remembers the refs of the writes applied to it for [`REF_MEMORY`] (at most
//! [`MAX_REFS`], the oldest forgotten first); a write whose ref is remembered is not applied
//! again and is acknowledged as it was. The refs live in the message's record, read and written
//! in the same compare-and-swap as the write itself, so this holds across processes.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// How long a message remembers the ref of a write applied to it.
pub const REF_MEMORY: Duration = Duration::minutes(10);
/// The most refs a message remembers.
pub const MAX_REFS: usize = 64;
/// The longest ref.
pub const MAX_REF_CHARS: usize = 64;

/// Whether `client_ref` may be used: 1..=64 characters, none of them a control character.
pub fn valid_ref(client_ref: &str) -> bool {
    !client_ref.is_empty()
        && client_ref.chars().count() <= MAX_REF_CHARS
        && !client_ref.chars().any(char::is_control)
}

/// The refs a message remembers, each with when its write was applied (ms since the epoch).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientRefs(Vec<(String, i64)>);

impl ClientRefs {
    /// Whether a write with `client_ref` was applied within [`REF_MEMORY`] before `now`.
    pub fn seen(&self, client_ref: &str, now: DateTime<Utc>) -> bool {
        let since = (now - REF_MEMORY).timestamp_millis();
        self.0
            .iter()
            .any(|(seen, at)| seen == client_ref && *at >= since)
    }

    /// Remembers that a write with `client_ref` was applied at `now`; forgets what is past
    /// [`REF_MEMORY`] and, past [`MAX_REFS`], the oldest.
    pub fn remember(&mut self, client_ref: &str, now: DateTime<Utc>) {
        let since = (now - REF_MEMORY).timestamp_millis();
        self.0.retain(|(_, at)| *at >= since);
        self.0.push((client_ref.to_owned(), now.timestamp_millis()));
        if self.0.len() > MAX_REFS {
            let excess = self.0.len() - MAX_REFS;
            self.0.drain(..excess);
        }
    }

    /// As stored (a JSON array of `[ref, ms]`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "[]".into())
    }

    /// From what is stored; anything unreadable is forgotten (a ref is a convenience: without
    /// it a resent write is applied again, never lost).
    pub fn from_json(text: &str) -> ClientRefs {
        serde_json::from_str(text).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ref_is_remembered_for_its_while_and_the_oldest_go_first() {
        let t0 = Utc::now();
        let mut refs = ClientRefs::default();
        assert!(!refs.seen("a", t0));
        refs.remember("a", t0);
        assert!(refs.seen("a", t0 + Duration::minutes(9)));
        assert!(
            !refs.seen("a", t0 + REF_MEMORY + Duration::seconds(1)),
            "forgotten"
        );
        for n in 0..MAX_REFS {
            refs.remember(&format!("r{n}"), t0 + Duration::seconds(1));
        }
        assert!(
            !refs.seen("a", t0 + Duration::seconds(2)),
            "the oldest went first"
        );
        assert!(refs.seen("r0", t0 + Duration::seconds(2)));
        let stored = ClientRefs::from_json(&refs.to_json());
        assert_eq!(stored, refs);
        assert_eq!(ClientRefs::from_json("not json"), ClientRefs::default());
    }

    #[test]
    fn a_ref_is_short_and_printable() {
        assert!(valid_ref("u-1733.7"));
        assert!(!valid_ref(""));
        assert!(!valid_ref(&"x".repeat(65)));
        assert!(!valid_ref("a\nb"));
    }
}
