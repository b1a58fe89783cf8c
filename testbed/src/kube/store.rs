//! Objects by resource, namespace and name, with one monotonic resourceVersion
//! over all of them and a bounded history of changes that watches replay.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write, as watches see it; `previous` lets a selector-filtered watch turn
/// a change into ADDED or DELETED when the object enters or leaves the selection.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub resource: String,
    pub namespace: String,
    pub event: EventType,
    pub object: Value,
    pub previous: Option<Value>,
}

type Key = (String, String, String);
/// Changes already made, and a receiver for the ones to come.
pub(crate) type Backlog = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// A watch from this version or older has lost events: 410 Gone.
    compacted: u64,
    limit: usize,
    tx: broadcast::Sender<Arc<Change>>,
}

/// The requested version is older than the retained history.
#[derive(Debug)]
pub(crate) struct Gone {
    pub oldest: u64,
}

impl Store {
    pub fn new(limit: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 1,
            limit: limit.max(1),
            tx,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(resource.to_owned(), namespace.to_owned(), name.to_owned()))
    }

    /// Objects of a resource, in one namespace or all, ordered by namespace and name.
    pub fn list<'a>(
        &'a self,
        resource: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |((r, ns, _), _)| r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v)
    }

    pub fn namespaces_in_use(&self, namespace: &str) -> Vec<(String, String)> {
        self.objects
            .keys()
            .filter(|(_, ns, _)| ns == namespace)
            .map(|(r, _, n)| (r.clone(), n.clone()))
            .collect()
    }

    /// Stores an object with the next resourceVersion and tells every watch.
    pub fn put(&mut self, resource: &str, namespace: &str, name: &str, mut object: Value) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        let previous = self.objects.insert(key, object.clone());
        let event = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(resource, namespace, event, object.clone(), previous);
        object
    }

    pub fn remove(&mut self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        let mut object = self.objects.remove(&key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(
            resource,
            namespace,
            EventType::Deleted,
            object.clone(),
            None,
        );
        Some(object)
    }

    fn record(
        &mut self,
        resource: &str,
        namespace: &str,
        event: EventType,
        object: Value,
        previous: Option<Value>,
    ) {
        let change = Arc::new(Change {
            rv: self.rv,
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            event,
            object,
            previous,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = self.tx.send(change);
    }

    /// Changes after `rv`, and a receiver for the ones to come, taken together
    /// so that no change falls between them.
    pub fn since(&self, rv: u64) -> Result<Backlog, Gone> {
        if rv < self.compacted {
            return Err(Gone {
                oldest: self.compacted,
            });
        }
        let past = self.history.iter().filter(|c| c.rv > rv).cloned().collect();
        Ok((past, self.tx.subscribe()))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// Forgets the history, as etcd compaction after a write does: every watch
    /// resumed from a version handed out so far must relist.
    pub fn compact(&mut self) {
        self.history.clear();
        self.rv += 1;
        self.compacted = self.rv;
    }

    pub fn snapshot(&self) -> Value {
        let objects: Vec<Value> = self
            .objects
            .iter()
            .map(|((r, ns, n), o)| json!({"resource": r, "namespace": ns, "name": n, "object": o}))
            .collect();
        json!({"resourceVersion": self.rv, "objects": objects})
    }

    pub fn restore(&mut self, snapshot: &Value) {
        self.rv = snapshot["resourceVersion"].as_u64().unwrap_or(1);
        self.compacted = self.rv;
        for entry in snapshot["objects"].as_array().into_iter().flatten() {
            let text = |k: &str| entry[k].as_str().unwrap_or_default().to_owned();
            self.objects.insert(
                (text("resource"), text("namespace"), text("name")),
                entry["object"].clone(),
            );
        }
    }
}
