//! The Secrets and ConfigMaps a resource names, read from the API server inside
//! reconcile (never cached: a Secret's value lives only as long as one
//! reconcile).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use crate::engine::Names;
use crate::runtime::Data;

/// What was read: by name, the data of each Secret and ConfigMap that exists.
#[derive(Clone, Default)]
pub(crate) struct Fetched {
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
pub(crate) async fn fetch(
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
