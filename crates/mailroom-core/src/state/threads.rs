//! A mailbox's memory of which ticket each message belongs to: the
//! Message-ID of every delivered message (tickets and replies) mapped to the
//! idempotency key of the message that opened its ticket, and the sink's
//! name for that ticket once the sink gave one. A reply whose
//! `In-Reply-To`/`References` name one of them answers that ticket.
//!
//! It lives in the mailbox's cursor, so it is as durable as the cursor (a
//! file, or the resource's ConfigMap), is saved in the same write, and goes
//! with the resource. It keeps the newest [`CAPACITY`] messages: a reply to
//! an older message still threads by the reference in its subject, which
//! acknowledgements and helpdesk answers carry. Saved packed: an 8-byte digest
//! of the Message-ID, the 32-byte key and the reference, about 65 bytes of
//! base64 a message.

use std::collections::{HashMap, VecDeque};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Messages remembered per mailbox (about 130 KB of cursor when full).
pub const CAPACITY: usize = 2_000;
/// The longest sink reference kept (webhook ticket ids are at most 64).
const MAX_REFERENCE: usize = 64;

/// What a remembered message belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thread {
    /// Idempotency key (hex) of the message that opened the ticket.
    pub root: String,
    /// The sink's name for the ticket, once known.
    pub reference: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    id: u64,
    root: [u8; 32],
    reference: Option<String>,
}

/// Message-ID → ticket, newest [`CAPACITY`] messages.
#[derive(Clone, Debug, Default)]
pub struct ThreadMap {
    entries: VecDeque<Entry>,
    /// Message digest → how many entries were pushed before it (its age).
    index: HashMap<u64, u64>,
    /// Entries pushed out since the start: turns an age into a position.
    evicted: u64,
}

/// Two memories are equal when they remember the same, in the same order
/// (however many entries each pushed out before).
impl PartialEq for ThreadMap {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for ThreadMap {}

fn digest(message_id: &str) -> u64 {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let hash = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

fn root_bytes(key: &str) -> Option<[u8; 32]> {
    let mut root = [0u8; 32];
    hex::decode_to_slice(key, &mut root).ok()?;
    Some(root)
}

/// The key of the ticket an acknowledgement answered, from the
/// acknowledgement's Message-ID (`<mailroom-ack.KEY@domain>`).
pub fn acknowledged_key(message_id: &str) -> Option<String> {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let local = id.split('@').next()?;
    let key = local.strip_prefix(ACK_PREFIX)?;
    root_bytes(key).map(|_| key.to_ascii_lowercase())
}

/// Left side of an acknowledgement's Message-ID, before the ticket key.
pub const ACK_PREFIX: &str = "mailroom-ack.";

impl ThreadMap {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ticket `message_id` belongs to, if it is remembered.
    pub fn get(&self, message_id: &str) -> Option<Thread> {
        let age = *self.index.get(&digest(message_id))?;
        let entry = self.entries.get(age.checked_sub(self.evicted)? as usize)?;
        Some(Thread {
            root: hex::encode(entry.root),
            reference: entry.reference.clone(),
        })
    }

    /// The sink's name for the ticket opened by `root`, if it gave one.
    pub fn reference_of(&self, root: &str) -> Option<String> {
        let root = root_bytes(root)?;
        self.entries
            .iter()
            .rev()
            .find(|e| e.root == root && e.reference.is_some())
            .and_then(|e| e.reference.clone())
    }

    /// Remembers that `message_id` belongs to the ticket opened by `root`.
    /// A key that is not a hex SHA-256 is not remembered.
    pub fn record(&mut self, message_id: &str, root: &str, reference: Option<&str>) {
        let Some(root) = root_bytes(root) else {
            return;
        };
        let id = digest(message_id);
        let reference = reference
            .filter(|r| r.len() <= MAX_REFERENCE)
            .map(str::to_owned);
        if let Some(age) = self.index.get(&id)
            && let Some(position) = age.checked_sub(self.evicted)
            && let Some(entry) = self.entries.get_mut(position as usize)
        {
            entry.root = root;
            if reference.is_some() {
                entry.reference = reference;
            }
            return;
        }
        self.push(Entry {
            id,
            root,
            reference,
        });
    }

    /// Appends an entry, pushing out the oldest when full.
    fn push(&mut self, entry: Entry) {
        if self.entries.len() >= CAPACITY
            && let Some(old) = self.entries.pop_front()
        {
            // Only when the index still points at it (not at a later entry
            // of the same digest, read from a damaged or older memory).
            if self.index.get(&old.id) == Some(&self.evicted) {
                self.index.remove(&old.id);
            }
            self.evicted += 1;
        }
        self.index
            .insert(entry.id, self.evicted + self.entries.len() as u64);
        self.entries.push_back(entry);
    }

    /// Notes the sink's name for the ticket opened by `root` on every
    /// message of it.
    pub fn learn(&mut self, root: &str, reference: &str) {
        let Some(root) = root_bytes(root) else {
            return;
        };
        if reference.len() > MAX_REFERENCE {
            return;
        }
        for e in self.entries.iter_mut().filter(|e| e.root == root) {
            e.reference = Some(reference.to_owned());
        }
    }

    fn from_entries(entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut map = Self::default();
        for e in entries {
            map.push(e);
        }
        map
    }
}

impl Serialize for ThreadMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(self.entries.len() * 42);
        for e in &self.entries {
            bytes.extend(e.id.to_be_bytes());
            bytes.extend(e.root);
            let reference = e.reference.as_deref().unwrap_or_default();
            bytes.push(reference.len() as u8);
            bytes.extend(reference.as_bytes());
        }
        s.serialize_str(&STANDARD_NO_PAD.encode(bytes))
    }
}

impl<'de> Deserialize<'de> for ThreadMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let damaged = |what: &str| serde::de::Error::custom(format!("the thread memory {what}"));
        let text = String::deserialize(d)?;
        let bytes = STANDARD_NO_PAD
            .decode(text)
            .map_err(|_| damaged("is not base64"))?;
        let mut entries = Vec::new();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            if rest.len() < 41 {
                return Err(damaged("ends inside an entry"));
            }
            let (head, tail) = rest.split_at(41);
            let mut id = [0u8; 8];
            id.copy_from_slice(&head[..8]);
            let mut root = [0u8; 32];
            root.copy_from_slice(&head[8..40]);
            let len = head[40] as usize;
            if tail.len() < len {
                return Err(damaged("ends inside a reference"));
            }
            let (reference, tail) = tail.split_at(len);
            let reference = std::str::from_utf8(reference)
                .map_err(|_| damaged("holds a reference that is not UTF-8"))?;
            entries.push(Entry {
                id: u64::from_be_bytes(id),
                root,
                reference: (!reference.is_empty()).then(|| reference.to_owned()),
            });
            rest = tail;
        }
        Ok(Self::from_entries(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> String {
        hex::encode(Sha256::digest(n.to_be_bytes()))
    }

    #[test]
    fn messages_map_to_their_ticket_and_learn_its_reference() {
        let mut map = ThreadMap::default();
        map.record("<first@example.org>", &key(1), None);
        map.record("reply@example.org", &key(1), None);
        map.record("other@example.org", &key(2), Some("7"));
        assert_eq!(map.get("first@example.org").unwrap().root, key(1));
        assert_eq!(map.get("<reply@example.org>").unwrap().reference, None);
        map.learn(&key(1), "42");
        assert_eq!(
            map.get("reply@example.org").unwrap().reference.as_deref(),
            Some("42")
        );
        assert_eq!(map.reference_of(&key(2)).as_deref(), Some("7"));
        assert_eq!(map.get("unknown@example.org"), None);
    }

    #[test]
    fn it_keeps_the_newest_messages_and_round_trips() {
        let mut map = ThreadMap::default();
        for n in 0..(CAPACITY as u32 + 10) {
            map.record(&format!("m{n}@example.org"), &key(n), Some("12345"));
        }
        assert_eq!(map.len(), CAPACITY);
        assert_eq!(map.get("m0@example.org"), None, "the oldest went");
        let newest = format!("m{}@example.org", CAPACITY + 9);
        assert_eq!(map.get(&newest).unwrap().root, key(CAPACITY as u32 + 9));
        let text = serde_json::to_string(&map).unwrap();
        assert!(text.len() < 65 * CAPACITY + 100, "{} bytes", text.len());
        let back: ThreadMap = serde_json::from_str(&text).unwrap();
        assert_eq!(back, map);
        assert_eq!(back.get(&newest), map.get(&newest));
        assert_eq!(back.get("m10@example.org").unwrap().root, key(10));
    }

    #[test]
    fn a_message_recorded_again_stays_one_entry() {
        let mut map = ThreadMap::default();
        map.record("a@x", &key(1), None);
        map.record("a@x", &key(1), Some("9"));
        assert_eq!(map.len(), 1);
        assert_eq!(map.get("a@x").unwrap().reference.as_deref(), Some("9"));
    }

    #[test]
    fn acknowledgement_ids_name_their_ticket() {
        let k = key(3);
        assert_eq!(
            acknowledged_key(&format!("<{ACK_PREFIX}{k}@mail.example.org>")),
            Some(k)
        );
        assert_eq!(acknowledged_key("<mailroom-ack.zz@x>"), None);
        assert_eq!(acknowledged_key("<other@x>"), None);
    }

    #[test]
    fn a_damaged_memory_is_an_error() {
        assert!(serde_json::from_str::<ThreadMap>(r#""AAAA""#).is_err());
        assert!(serde_json::from_str::<ThreadMap>(r#""not base64!""#).is_err());
    }
}
