//! What the benchmarks share.

use mailroom::config::{SecretError, SecretSource};

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
