//! The Secrets and ConfigMaps a resource names, read from the API server inside
//! reconcile (never cached: a Secret's value lives only as long as one
//! reconcile), and the reverse: which resources name a given Secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use crate::api::{IncomingEmailServerSpec, OutgoingEmailServerSpec, ProxySpec, TlsSpec};
use crate::runtime::{Data, Lookup};

/// Names of the Secrets and ConfigMaps a spec refers to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub secrets: Vec<String>,
    pub config_maps: Vec<String>,
}

impl Names {
    fn add_tls(&mut self, tls: Option<&TlsSpec>) {
        if let Some(t) = tls {
            if let Some(r) = &t.ca_secret_ref {
                self.secrets.push(r.name.clone());
            }
            if let Some(r) = &t.ca_config_map_ref {
                self.config_maps.push(r.name.clone());
            }
        }
    }

    fn add_proxy(&mut self, proxy: Option<&ProxySpec>) {
        if let Some(r) = proxy.and_then(|p| p.credentials_secret_ref.as_ref()) {
            self.secrets.push(r.name.clone());
        }
    }

    fn done(mut self) -> Self {
        self.secrets.sort();
        self.secrets.dedup();
        self.config_maps.sort();
        self.config_maps.dedup();
        self
    }

    pub fn incoming(spec: &IncomingEmailServerSpec) -> Self {
        let mut n = Self::default();
        if let Some(r) = &spec.auth.password_secret_ref {
            n.secrets.push(r.name.clone());
        }
        if let Some(o) = &spec.auth.oauth2 {
            n.secrets.push(o.secret_ref.name.clone());
        }
        if let Some(r) = spec
            .ticket
            .sink
            .as_ref()
            .and_then(|s| s.webhook.as_ref())
            .and_then(|w| w.signing_secret_ref.as_ref())
        {
            n.secrets.push(r.name.clone());
        }
        n.add_tls(spec.tls.as_ref());
        n.add_proxy(spec.proxy.as_ref());
        n.done()
    }

    pub fn outgoing(spec: &OutgoingEmailServerSpec) -> Self {
        let mut n = Self::default();
        if let Some(r) = &spec.authentication.password_secret_ref {
            n.secrets.push(r.name.clone());
        }
        if let Some(o) = &spec.authentication.oauth2 {
            n.secrets.push(o.secret_ref.name.clone());
        }
        n.add_tls(spec.tls.as_ref());
        n.add_proxy(spec.proxy.as_ref());
        n.done()
    }
}

/// What was read: by name, the data of each Secret and ConfigMap that exists.
#[derive(Clone, Default)]
pub struct Fetched {
    pub secrets: BTreeMap<String, Data>,
    pub config_maps: BTreeMap<String, Data>,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("config_maps", &self.config_maps.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn secret_data(s: Secret) -> Data {
    let mut data: Data = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    data
}

fn config_map_data(c: ConfigMap) -> Data {
    let mut data: Data = c
        .binary_data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in c.data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    data
}

/// Reads the named objects of `namespace`; a missing one is simply absent
/// (resolving then reports SecretNotFound), any other failure is an error.
pub async fn fetch(
    client: &Client,
    namespace: &str,
    names: &Names,
) -> Result<Fetched, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut out = Fetched::default();
    for name in &names.secrets {
        if let Some(s) = secrets.get_opt(name).await? {
            out.secrets.insert(name.clone(), secret_data(s));
        }
    }
    for name in &names.config_maps {
        if let Some(c) = config_maps.get_opt(name).await? {
            out.config_maps.insert(name.clone(), config_map_data(c));
        }
    }
    Ok(out)
}

impl Fetched {
    pub fn secrets(&self) -> Lookup<'_> {
        Lookup::new(Some(&self.secrets), "Secret")
    }

    pub fn config_maps(&self) -> Lookup<'_> {
        Lookup::new(Some(&self.config_maps), "ConfigMap")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_reference() {
        let spec: IncomingEmailServerSpec = serde_json::from_value(serde_json::json!({
            "email": "a@example.com",
            "provider": "Gmail",
            "auth": {"passwordSecretRef": {"name": "pw", "key": "password"}},
            "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}, "caConfigMapRef": {"name": "bundle", "key": "ca.crt"}},
            "ticket": {"sink": {"webhook": {"url": "https://h.example/t", "signingSecretRef": {"name": "hook", "key": "k"}}}},
        }))
        .unwrap();
        let n = Names::incoming(&spec);
        assert_eq!(n.secrets, ["ca", "hook", "pw"]);
        assert_eq!(n.config_maps, ["bundle"]);
    }
}
