//! A small pool of signed-in SMTP sessions per server. lettre's own pooled
//! transport opens connections with its own TLS setup; ours go through
//! `connection` (staged, same rustls roots as IMAP/POP3), so the pool is ours
//! too: at most `size` sessions at once, idle ones reused while fresh.

use std::sync::Mutex;
use std::time::Duration;

use lettre::Address;
use tokio::sync::Semaphore;

use super::OutgoingSettings;
use super::smtp::{self, RcptAnswer, SmtpSession, TransactionError};
use crate::connection::{Failure, Probe};
use crate::sync::unpoisoned;

/// Sessions idle longer than this are closed rather than reused: servers drop
/// idle clients after a few minutes, and a dead session costs a retry.
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("{0}")]
    Connect(Failure),
    #[error("{0}")]
    Transaction(TransactionError),
}

#[derive(Debug)]
pub(crate) struct Pool {
    idle: Mutex<Vec<SmtpSession>>,
    permits: Semaphore,
}

impl Pool {
    pub fn new(size: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
        }
    }

    fn take_idle(&self) -> Option<SmtpSession> {
        let mut idle = unpoisoned(&self.idle);
        while let Some(session) = idle.pop() {
            if session.last_used.elapsed() < MAX_IDLE_AGE && session.usable() {
                return Some(session);
            }
        }
        None
    }

    fn give_back(&self, mut session: SmtpSession) {
        if session.usable() {
            session.last_used = std::time::Instant::now();
            unpoisoned(&self.idle).push(session);
        }
    }

    /// Sends one message over a pooled session. A reused session that turns out
    /// dead is replaced once by a fresh one.
    pub async fn send(
        &self,
        settings: &OutgoingSettings,
        from: &Address,
        recipients: &[Address],
        message: &[u8],
    ) -> Result<Vec<RcptAnswer>, AttemptError> {
        let _permit = self.permits.acquire().await.map_err(|_| {
            AttemptError::Transaction(TransactionError::Broken("pool closed".into()))
        })?;
        if let Some(mut session) = self.take_idle() {
            match session.transaction(from, recipients, message).await {
                Err(TransactionError::Broken(_)) => {}
                result => {
                    self.give_back(session);
                    return result.map_err(AttemptError::Transaction);
                }
            }
        }
        let mut session = smtp::connect(settings, &mut Probe::new())
            .await
            .map_err(AttemptError::Connect)?;
        let result = session.transaction(from, recipients, message).await;
        if !matches!(result, Err(TransactionError::Broken(_))) {
            self.give_back(session);
        }
        result.map_err(AttemptError::Transaction)
    }
}
