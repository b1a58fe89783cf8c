//! Watches: a stream of newline-separated JSON events from a resourceVersion,
//! replayed from the retained history, with bookmarks when asked, `410 Gone`
//! (as an ERROR event, like the API server) when the version is too old, and
//! an end when the client's timeout passes or a test drops every watch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Shared;
use super::handlers::Call;
use super::render::Render;
use super::select::Selector;
use super::status::ApiError;
use super::store::{Change, EventType};

/// Opens a watch; the receiver yields the body's lines.
pub(crate) fn open(shared: Arc<Shared>, call: Call) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let selector = call.selector()?;
    let resource = call.kind.group_resource();
    let from = call
        .query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    // A streaming list (client-go's WatchList): the state first, then a
    // bookmark marking the end of it, then changes.
    let initial_events = call
        .query
        .get("sendInitialEvents")
        .is_some_and(|v| v == "true");
    let (tx, rx) = mpsc::channel(1024);
    let mut first: Vec<Value> = Vec::new();
    let (backlog, changes, start_rv) = {
        let state = shared.lock();
        if from.is_empty() || from == "0" || initial_events {
            // No version: the current objects as ADDED, then what follows.
            for o in state
                .store
                .list(&resource, call.namespace.as_deref())
                .filter(|o| selector.matches(o))
            {
                first.push(event("ADDED", call.render.object(&call.kind, o)));
            }
            let rv = state.store.resource_version();
            if initial_events {
                first.push(event(
                    "BOOKMARK",
                    json!({
                        "kind": call.kind.kind,
                        "apiVersion": call.kind.api_version(),
                        "metadata": {
                            "resourceVersion": rv.to_string(),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    }),
                ));
            }
            (Vec::new(), state.store.subscribe(), rv)
        } else {
            let rv: u64 = from
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {from:?}")))?;
            match state.store.since(rv) {
                Ok((past, rx)) => (past, rx, rv),
                Err(gone) => {
                    let status = ApiError::new(
                        410,
                        "Expired",
                        format!("too old resource version: {rv} ({})", gone.oldest),
                    );
                    let line = line(&event("ERROR", status.body()));
                    let _ = tx.try_send(line);
                    return Ok(rx);
                }
            }
        }
    };
    let timeout = call
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let bookmarks = call
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let stream = Stream {
        shared,
        call,
        selector,
        resource,
        tx,
        seen: start_rv,
    };
    tokio::spawn(stream.run(first, backlog, changes, timeout, bookmarks));
    Ok(rx)
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

fn line(v: &Value) -> Bytes {
    let mut text = v.to_string();
    text.push('\n');
    Bytes::from(text)
}

struct Stream {
    shared: Arc<Shared>,
    call: Call,
    selector: Selector,
    resource: String,
    tx: mpsc::Sender<Bytes>,
    /// Every change up to here has been sent or filtered out.
    seen: u64,
}

impl Stream {
    fn render(&self) -> Render {
        // kubectl's watch of a table reads plain objects too.
        match &self.call.render {
            Render::Table { .. } => Render::Full,
            r => r.clone(),
        }
    }

    /// The event a change is for this watch, if any.
    fn translate(&self, change: &Change) -> Option<Value> {
        if change.resource != self.resource
            || self
                .call
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != change.namespace)
        {
            return None;
        }
        let now = self.selector.matches(&change.object);
        let before = change
            .previous
            .as_ref()
            .is_some_and(|p| self.selector.matches(p));
        let kind = match (change.event, before, now) {
            (EventType::Deleted, _, true) => "DELETED",
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            _ => return None,
        };
        Some(event(
            kind,
            self.render().object(&self.call.kind, &change.object),
        ))
    }

    async fn send(&self, v: &Value) -> bool {
        self.shared
            .faults
            .pass_partition(&[&self.call.user.name, &self.call.token])
            .await;
        self.tx.send(line(v)).await.is_ok()
    }

    async fn run(
        mut self,
        first: Vec<Value>,
        backlog: Vec<Arc<Change>>,
        mut changes: broadcast::Receiver<Arc<Change>>,
        timeout: Duration,
        bookmarks: bool,
    ) {
        for e in &first {
            if !self.send(e).await {
                return;
            }
        }
        for change in backlog {
            self.seen = self.seen.max(change.rv);
            if let Some(e) = self.translate(&change)
                && !self.send(&e).await
            {
                return;
            }
        }
        let mut dropped = self.shared.drop_watches.subscribe();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(self.shared.bookmark_every);
        tick.tick().await;
        loop {
            tokio::select! {
                received = changes.recv() => match received {
                    Ok(change) => {
                        if change.rv <= self.seen {
                            continue;
                        }
                        self.seen = change.rv;
                        if let Some(e) = self.translate(&change)
                            && !self.send(&e).await
                        {
                            return;
                        }
                    }
                    // Fell behind: end the watch; the client resumes from its last version.
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let mark = event("BOOKMARK", json!({
                        "kind": self.call.kind.kind,
                        "apiVersion": self.call.kind.api_version(),
                        "metadata": {"resourceVersion": self.seen.to_string()},
                    }));
                    if !self.send(&mark).await {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = dropped.changed() => return,
                _ = self.tx.closed() => return,
            }
        }
    }
}
