//! Faults on demand, per user name or per bearer token (one client of a user
//! that several replicas share): added latency, `429 Too Many Requests` with
//! `Retry-After`, `500`s, and a partition (requests and watches hang until
//! healed).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

#[derive(Clone, Debug, Default)]
struct UserFaults {
    latency: Duration,
    throttle: u32,
    retry_after: u32,
    errors: u32,
    partitioned: bool,
}

/// What a request meets before it is served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Serve,
    Throttle { retry_after: u32 },
    Fail,
}

pub struct Faults {
    by_user: Mutex<HashMap<String, UserFaults>>,
    /// Bumped on every change, so that hanging requests look again.
    changed: watch::Sender<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            by_user: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
        }
    }
}

impl Faults {
    fn edit(&self, user: &str, f: impl FnOnce(&mut UserFaults)) {
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(user.to_owned()).or_default());
        drop(map);
        self.changed.send_modify(|n| *n += 1);
    }

    fn of(&self, user: &str) -> UserFaults {
        self.by_user
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// Every request of `user` (a user name or a token) waits this long first.
    pub fn latency(&self, user: &str, delay: Duration) {
        self.edit(user, |f| f.latency = delay);
    }

    /// The next `count` requests of `user` are answered 429 with `Retry-After`.
    pub fn throttle(&self, user: &str, count: u32, retry_after_secs: u32) {
        self.edit(user, |f| {
            f.throttle = count;
            f.retry_after = retry_after_secs;
        });
    }

    /// The next `count` requests of `user` are answered 500.
    pub fn fail(&self, user: &str, count: u32) {
        self.edit(user, |f| f.errors = count);
    }

    /// `user`'s requests hang (and its watches go silent) until [`Faults::heal`].
    pub fn partition(&self, user: &str) {
        self.edit(user, |f| f.partitioned = true);
    }

    /// Clears every fault of `user`.
    pub fn heal(&self, user: &str) {
        self.edit(user, |f| *f = UserFaults::default());
    }

    fn partitioned(&self, keys: &[&str]) -> bool {
        keys.iter().any(|k| self.of(k).partitioned)
    }

    /// Waits while any of `keys` (user name, token) is partitioned.
    pub(crate) async fn pass_partition(&self, keys: &[&str]) {
        let mut changed = self.changed.subscribe();
        while self.partitioned(keys) {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Latency and partition first, then whether to serve, throttle or fail.
    pub(crate) async fn before(&self, keys: &[&str]) -> Verdict {
        self.pass_partition(keys).await;
        let latency = keys
            .iter()
            .map(|k| self.of(k).latency)
            .max()
            .unwrap_or_default();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            let Some(f) = map.get_mut(*key) else {
                continue;
            };
            if f.throttle > 0 {
                f.throttle -= 1;
                return Verdict::Throttle {
                    retry_after: f.retry_after,
                };
            }
            if f.errors > 0 {
                f.errors -= 1;
                return Verdict::Fail;
            }
        }
        Verdict::Serve
    }
}
