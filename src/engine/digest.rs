//! The digest of everything a running resource was started from: its kind and
//! spec, the data of the Secrets and ConfigMaps the spec names, and extras
//! (the re-test annotation, the namespace's own addresses). Equal digests:
//! nothing to restart.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Names;
use crate::api::{IncomingEmailServerSpec, OutgoingEmailServerSpec};
use crate::runtime::Data;
use mailroom_core::oauth2::Tokens;

/// A spec the engine runs: its kind and what it references.
pub(crate) trait Spec: Serialize {
    const KIND: &'static str;
    fn references(&self) -> Names;
}

impl Spec for IncomingEmailServerSpec {
    const KIND: &'static str = "IncomingEmailServer";
    fn references(&self) -> Names {
        Names::incoming(self)
    }
}

impl Spec for OutgoingEmailServerSpec {
    const KIND: &'static str = "OutgoingEmailServer";
    fn references(&self) -> Names {
        Names::outgoing(self)
    }
}

/// The digest of `spec` in `namespace` with the data it references. Refresh
/// tokens that the process's own OAuth2 grants wrote back count as the token
/// they replaced, so a rotation restarts nothing.
pub(crate) fn digest<S: Spec>(
    spec: &S,
    namespace: &str,
    secrets: &BTreeMap<String, Data>,
    config_maps: &BTreeMap<String, Data>,
    tokens: &Tokens,
    extra: &[&str],
) -> [u8; 32] {
    let names = spec.references();
    let secrets = tokens.stable_view(namespace, secrets);
    let mut h = Sha256::new();
    h.update(S::KIND.as_bytes());
    h.update(serde_json::to_string(spec).unwrap_or_default().as_bytes());
    for (what, objects, wanted) in [
        ("Secret", &secrets, &names.secrets),
        ("ConfigMap", config_maps, &names.config_maps),
    ] {
        for name in wanted {
            h.update(what.as_bytes());
            h.update(name.as_bytes());
            // A missing object and an empty one differ: the first cannot resolve.
            let Some(data) = objects.get(name) else {
                h.update([0]);
                continue;
            };
            h.update([1]);
            for (k, v) in data {
                h.update((k.len() as u64).to_le_bytes());
                h.update(k.as_bytes());
                h.update((v.len() as u64).to_le_bytes());
                h.update(v);
            }
        }
    }
    for e in extra {
        h.update(e.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> IncomingEmailServerSpec {
        serde_json::from_value(serde_json::json!({
            "email": "a@example.com",
            "server": "mail.example.com",
            "auth": {"passwordSecretRef": {"name": "mail", "key": "password"}},
        }))
        .unwrap()
    }

    fn secret(v: &str) -> BTreeMap<String, Data> {
        [(
            "mail".to_owned(),
            [("password".to_owned(), v.as_bytes().to_vec())].into(),
        )]
        .into()
    }

    #[test]
    fn the_digest_follows_named_secrets_only() {
        let tokens = Tokens::new(None);
        let none = BTreeMap::new();
        let d = |secrets: &BTreeMap<String, Data>, extra: &[&str]| {
            digest(&spec(), "ns", secrets, &none, &tokens, extra)
        };
        let base = d(&secret("a"), &[]);
        assert_eq!(base, d(&secret("a"), &[]));
        assert_ne!(base, d(&secret("b"), &[]));
        assert_ne!(base, d(&none, &[]), "a missing Secret differs");
        let mut other = secret("a");
        other.insert("unrelated".into(), [("x".to_owned(), b"y".to_vec())].into());
        assert_eq!(base, d(&other, &[]));
        assert_ne!(base, d(&secret("a"), &["own@x.y"]));
    }
}
