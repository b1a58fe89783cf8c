//! How many sessions a process opens at once. Two limits, shared by every
//! worker of the process:
//!
//! - sign-ins in progress (TCP, TLS, login): a start-up or a server coming
//!   back after an outage connects every mailbox, and a bounded number at a
//!   time keeps that from looking like an attack to the server, or from
//!   starving the process of file descriptors and CPU for TLS handshakes;
//! - sessions per account: providers cap the connections of one account
//!   (Gmail 15 IMAP sessions, Microsoft 365 20), and several resources that
//!   sign in to the same account (other folders, other namespaces) share the
//!   cap. A worker without a free session waits and says so, rather than
//!   being refused by the server and retrying.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::sync::unpoisoned;
use crate::vocab::Provider;

/// Defaults: sign-ins at once, and no per-account cap beyond the providers'.
const CONNECTING: usize = 64;

/// The limits of one process (or of one test).
#[derive(Clone, Debug)]
pub struct SessionLimits(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    connecting: Arc<Semaphore>,
    /// Caps every account at this many sessions, whatever its provider.
    per_account: Option<usize>,
    accounts: Mutex<HashMap<String, Weak<Semaphore>>>,
}

impl Default for SessionLimits {
    /// The process's limits, as `configure` set them.
    fn default() -> Self {
        process().clone()
    }
}

static PROCESS: OnceLock<SessionLimits> = OnceLock::new();

fn process() -> &'static SessionLimits {
    PROCESS.get_or_init(|| SessionLimits::new(CONNECTING, None))
}

/// Sets the process's limits; only before the first worker starts (later
/// calls are refused, as workers already share the first ones).
pub fn configure(connecting: usize, per_account: Option<usize>) -> Result<(), String> {
    PROCESS
        .set(SessionLimits::new(connecting, per_account))
        .map_err(|_| "the session limits were set already".to_owned())
}

/// A session's hold on one of its account's sessions, released on drop.
#[derive(Debug)]
#[must_use]
pub struct SessionSlot {
    _held: Option<OwnedSemaphorePermit>,
}

impl SessionLimits {
    pub fn new(connecting: usize, per_account: Option<usize>) -> Self {
        Self(Arc::new(Inner {
            connecting: Arc::new(Semaphore::new(connecting.max(1))),
            per_account,
            accounts: Mutex::default(),
        }))
    }

    /// The cap on one account's sessions: the configured one, else the
    /// provider's (none for other servers).
    pub fn cap(&self, provider: Provider) -> Option<usize> {
        self.0.per_account.or(match provider {
            Provider::Gmail => Some(15),
            Provider::Microsoft365 => Some(20),
            Provider::Other => None,
        })
    }

    fn account(&self, account: &str, cap: usize) -> Arc<Semaphore> {
        let mut accounts = unpoisoned(&self.0.accounts);
        accounts.retain(|_, s| s.strong_count() > 0);
        if let Some(s) = accounts.get(account).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(Semaphore::new(cap));
        accounts.insert(account.to_owned(), Arc::downgrade(&s));
        s
    }

    /// A session of `account` (protocol, user and server, e.g.
    /// `imap:support@gmail.com@imap.gmail.com`) if one is free now; `Err`
    /// with the cap when all are in use.
    pub fn try_session(&self, account: &str, provider: Provider) -> Result<SessionSlot, usize> {
        let Some(cap) = self.cap(provider) else {
            return Ok(SessionSlot { _held: None });
        };
        self.account(account, cap)
            .try_acquire_owned()
            .map(|p| SessionSlot { _held: Some(p) })
            .map_err(|_| cap)
    }

    /// Waits for a session of `account`.
    pub async fn session(&self, account: &str, provider: Provider) -> SessionSlot {
        let Some(cap) = self.cap(provider) else {
            return SessionSlot { _held: None };
        };
        // The semaphore is never closed, so acquiring cannot fail.
        SessionSlot {
            _held: self.account(account, cap).acquire_owned().await.ok(),
        }
    }

    /// Waits for a turn to sign in; the turn ends when the permit is dropped.
    pub async fn connecting(&self) -> Option<OwnedSemaphorePermit> {
        self.0.connecting.clone().acquire_owned().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resources_of_one_account_share_its_cap_and_a_session_ended_frees_one() {
        let limits = SessionLimits::new(4, Some(2));
        let a = limits.try_session("imap:u@h", Provider::Other).unwrap();
        let _b = limits.try_session("imap:u@h", Provider::Other).unwrap();
        assert_eq!(
            limits.try_session("imap:u@h", Provider::Other).unwrap_err(),
            2
        );
        // Another account has sessions of its own.
        assert!(limits.try_session("imap:v@h", Provider::Other).is_ok());
        drop(a);
        assert!(limits.try_session("imap:u@h", Provider::Other).is_ok());
    }

    #[test]
    fn providers_cap_their_accounts_and_other_servers_are_uncapped() {
        let limits = SessionLimits::new(4, None);
        assert_eq!(limits.cap(Provider::Gmail), Some(15));
        assert_eq!(limits.cap(Provider::Microsoft365), Some(20));
        assert_eq!(limits.cap(Provider::Other), None);
        assert_eq!(SessionLimits::new(4, Some(3)).cap(Provider::Gmail), Some(3));
    }

    #[tokio::test]
    async fn sign_ins_wait_for_a_turn() {
        let limits = SessionLimits::new(1, None);
        let first = limits.connecting().await;
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), limits.connecting()).await;
        assert!(waiting.is_err(), "a second sign-in went ahead of the first");
        drop(first);
        assert!(limits.connecting().await.is_some());
    }
}
