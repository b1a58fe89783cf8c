//! POP3 UIDLs in a cursor, kept as 8-byte digests and saved as one base64
//! string: about 11 bytes a message instead of the UIDL itself (up to 70)
//! with JSON quoting, so a ConfigMap's 1 MiB holds some 90,000 messages.
//! Two UIDLs of one mailbox share a digest with a chance of about n²/2⁶⁵
//! (1 in 10⁹ at 200,000 messages); the cost would be one message taken as
//! seen. Cursors written as lists of UIDLs are read and converted.

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A set of UIDLs, by digest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UidlSet(BTreeSet<u64>);

fn digest(uidl: &str) -> u64 {
    let hash = Sha256::digest(uidl.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

impl UidlSet {
    pub fn contains(&self, uidl: &str) -> bool {
        self.0.contains(&digest(uidl))
    }

    pub fn insert(&mut self, uidl: &str) {
        self.0.insert(digest(uidl));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Keeps only the UIDLs among `present` (the server's listing).
    pub fn retain_present<'a>(&mut self, present: impl IntoIterator<Item = &'a str>) {
        let present: BTreeSet<u64> = present.into_iter().map(digest).collect();
        self.0.retain(|d| present.contains(d));
    }
}

impl<'a> Extend<&'a str> for UidlSet {
    fn extend<I: IntoIterator<Item = &'a str>>(&mut self, uidls: I) {
        self.0.extend(uidls.into_iter().map(digest));
    }
}

impl<'a> FromIterator<&'a str> for UidlSet {
    fn from_iter<I: IntoIterator<Item = &'a str>>(uidls: I) -> Self {
        let mut set = Self::default();
        set.extend(uidls);
        set
    }
}

impl Serialize for UidlSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = self.0.iter().flat_map(|d| d.to_be_bytes()).collect();
        s.serialize_str(&STANDARD_NO_PAD.encode(bytes))
    }
}

/// Packed digests, or the list of UIDLs cursors held before.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Packed(String),
    Uidls(Vec<String>),
}

impl<'de> Deserialize<'de> for UidlSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Stored::deserialize(d)? {
            Stored::Uidls(uidls) => Ok(Self(uidls.iter().map(|u| digest(u)).collect())),
            Stored::Packed(text) => {
                let bytes = STANDARD_NO_PAD
                    .decode(text)
                    .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))?;
                if bytes.len() % 8 != 0 {
                    return Err(serde::de::Error::custom(
                        "the packed UIDL digests are not a whole number of 8-byte digests",
                    ));
                }
                Ok(Self(
                    bytes
                        .chunks_exact(8)
                        .map(|c| {
                            let mut d = [0u8; 8];
                            d.copy_from_slice(c);
                            u64::from_be_bytes(d)
                        })
                        .collect(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_round_trips_and_answers_by_uidl() {
        let mut set = UidlSet::default();
        set.extend(["a1", "b2", "GmailId1234567890abcdef"]);
        let text = serde_json::to_string(&set).unwrap();
        let back: UidlSet = serde_json::from_str(&text).unwrap();
        assert_eq!(back, set);
        assert!(back.contains("b2") && !back.contains("c3"));
        let mut kept = back.clone();
        kept.retain_present(["b2", "zz"]);
        assert_eq!(kept.len(), 1);
        assert!(kept.contains("b2"));
    }

    #[test]
    fn a_cursor_of_uidl_lists_is_read_as_the_same_set() {
        let old: UidlSet = serde_json::from_str(r#"["a1","b2"]"#).unwrap();
        let mut new = UidlSet::default();
        new.extend(["a1", "b2"]);
        assert_eq!(old, new);
    }

    #[test]
    fn packed_digests_take_a_fraction_of_the_uidls() {
        let uidls: Vec<String> = (0..10_000)
            .map(|i| format!("UID{i:08}-1701234567.M123456P7890.mail.example.org"))
            .collect();
        let mut set = UidlSet::default();
        set.extend(uidls.iter().map(String::as_str));
        let packed = serde_json::to_string(&set).unwrap().len();
        let listed = serde_json::to_string(&uidls).unwrap().len();
        assert!(
            packed * 5 < listed,
            "{packed} bytes packed, {listed} listed"
        );
        assert!(packed < 11 * 10_000, "{packed}");
    }

    #[test]
    fn a_damaged_packed_set_is_an_error() {
        assert!(serde_json::from_str::<UidlSet>(r#""AAAA""#).is_err());
        assert!(serde_json::from_str::<UidlSet>(r#""not base64!""#).is_err());
    }
}
