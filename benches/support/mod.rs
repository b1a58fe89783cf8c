//! What the benchmarks share.

use std::sync::LazyLock;

use mailroom::resolve::{SecretError, SecretSource, Sources};
use mailroom_core::oauth2::Tokens;

/// Secret values in memory: (name, key, value).
pub struct Secrets(pub Vec<(String, String, String)>);

impl SecretSource for Secrets {
    fn get(&self, name: &str, key: &str) -> Result<Vec<u8>, SecretError> {
        self.0
            .iter()
            .find(|(n, k, _)| n == name && k == key)
            .map(|(_, _, v)| v.as_bytes().to_vec())
            .ok_or_else(|| SecretError::NotFound { name: name.into() })
    }
}

/// Lookups in namespace `bench` for `secrets`, with no ConfigMaps.
pub fn sources(secrets: &Secrets) -> Sources<'_> {
    static NO_CONFIG_MAPS: Secrets = Secrets(Vec::new());
    static TOKENS: LazyLock<Tokens> = LazyLock::new(Tokens::default);
    Sources {
        namespace: "bench",
        secrets,
        config_maps: &NO_CONFIG_MAPS,
        tokens: &TOKENS,
    }
}
