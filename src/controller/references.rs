//! The Secrets and ConfigMaps resources reference. Both kinds are watched as
//! metadata only; a value is read from the API when a resource needs it and
//! kept while the object's resourceVersion stands, so a steady cluster costs
//! the API server these watches and nothing else. A changed or deleted object
//! reaches its referencing resources through the watch (`touched`).

use std::collections::{BTreeMap, HashMap};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::core::{NamespaceResourceScope, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::ready;
use crate::engine::Names;
use crate::runtime::Data;
use mailroom_core::sync::unpoisoned;

/// Cursor ConfigMaps carry this label; they change at every saved batch and
/// are never referenced, so the ConfigMap watch leaves them out.
pub(crate) const CURSOR_LABEL: &str = "mailroom.dev/cursor";

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

/// Which kind a watched object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Secret,
    ConfigMap,
}

/// Values of one kind, each with the resourceVersion it was read at.
struct Cached<K: Resource<DynamicType = ()> + Clone + 'static> {
    meta: Store<PartialObjectMeta<K>>,
    values: std::sync::Mutex<HashMap<(String, String), (String, Data)>>,
    data_of: fn(K) -> Data,
}

impl<K> Cached<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + 'static,
{
    fn new(meta: Store<PartialObjectMeta<K>>, data_of: fn(K) -> Data) -> Self {
        Self {
            meta,
            values: std::sync::Mutex::default(),
            data_of,
        }
    }

    /// The object's data: from memory when the watch shows the version read
    /// before, else from the API. A missing object is `None`; it is asked
    /// for even when the watch does not show it (it may be newer than the
    /// watch), which costs a GET per resync for a broken reference only.
    async fn read(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Data>, kube::Error> {
        let key = (namespace.to_owned(), name.to_owned());
        if ready(&self.meta).await {
            let watched = self
                .meta
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|m| m.metadata.resource_version.clone());
            if let Some(version) = watched
                && let Some((read_at, data)) = unpoisoned(&self.values).get(&key)
                && *read_at == version
            {
                return Ok(Some(data.clone()));
            }
        }
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        let Some(obj) = api.get_opt(name).await? else {
            unpoisoned(&self.values).remove(&key);
            return Ok(None);
        };
        let version = obj.meta().resource_version.clone();
        let data = (self.data_of)(obj);
        match version {
            Some(v) => unpoisoned(&self.values).insert(key, (v, data.clone())),
            None => unpoisoned(&self.values).remove(&key),
        };
        Ok(Some(data))
    }
}

/// The referenced objects' values of one scope (a namespace, or all).
pub struct References {
    client: Client,
    secrets: Cached<Secret>,
    config_maps: Cached<ConfigMap>,
}

impl std::fmt::Debug for References {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("References").finish_non_exhaustive()
    }
}

impl References {
    /// Values read through `client`, judged fresh by the metadata in the
    /// two stores (an empty, never-synced store means: always read).
    pub fn new(
        client: Client,
        secrets: Store<PartialObjectMeta<Secret>>,
        config_maps: Store<PartialObjectMeta<ConfigMap>>,
    ) -> Self {
        Self {
            client,
            secrets: Cached::new(secrets, secret_data),
            config_maps: Cached::new(config_maps, config_map_data),
        }
    }

    /// The metadata watches of `scope` feeding a new `References`, and the
    /// stream of objects they see change (created, changed, deleted).
    pub fn watch(
        client: &Client,
        scope: Option<&str>,
    ) -> (
        Self,
        impl Stream<Item = (Kind, String, String)> + Send + 'static,
    ) {
        fn api<K>(client: &Client, scope: Option<&str>) -> Api<K>
        where
            K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
        {
            match scope {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let (secret_store, secret_writer) = reflector::store();
        let (map_store, map_writer) = reflector::store();
        let secrets = watcher(
            api::<PartialObjectMeta<Secret>>(client, scope),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(secret_writer)
        .touched_objects()
        .map(|r| r.map(|m| (Kind::Secret, m.metadata)));
        let maps = watcher(
            api::<PartialObjectMeta<ConfigMap>>(client, scope),
            watcher::Config::default().labels(&format!("!{CURSOR_LABEL}")),
        )
        .default_backoff()
        .reflect(map_writer)
        .touched_objects()
        .map(|r| r.map(|m| (Kind::ConfigMap, m.metadata)));
        let touched = futures::stream::select(secrets, maps).filter_map(|r| async move {
            match r {
                Ok((kind, m)) => Some((kind, m.namespace?, m.name?)),
                Err(e) => {
                    tracing::warn!("watching referenced Secrets and ConfigMaps: {e}; retrying");
                    None
                }
            }
        });
        (Self::new(client.clone(), secret_store, map_store), touched)
    }

    /// Reads the named objects of `namespace`; a missing one is simply absent
    /// (resolving then reports SecretNotFound), any other failure is an error.
    pub(crate) async fn fetch(
        &self,
        namespace: &str,
        names: &Names,
    ) -> Result<Fetched, kube::Error> {
        let mut out = Fetched::default();
        for name in &names.secrets {
            if let Some(d) = self.secrets.read(&self.client, namespace, name).await? {
                out.secrets.insert(name.clone(), d);
            }
        }
        for name in &names.config_maps {
            if let Some(d) = self.config_maps.read(&self.client, namespace, name).await? {
                out.config_maps.insert(name.clone(), d);
            }
        }
        Ok(out)
    }
}
