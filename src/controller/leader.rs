//! Leader election with a coordination.k8s.io Lease, with client-go's rules:
//!
//! - a Lease held by someone else is free only when it has not *changed* for
//!   its duration as measured on our own monotonic clock since we observed the
//!   change (the holder's `renewTime` is never compared with our wall clock,
//!   so clock skew between nodes cannot make two leaders);
//! - the leader renews every retry period and gives leadership up when no
//!   renewal has succeeded within the renew deadline, which is shorter than
//!   the Lease's duration: a leader cut off from the API server stops its
//!   workers before any other replica may take over;
//! - on shutdown the leader releases the Lease, so a standby takes over at once.
//!
//! kube-lease-manager was considered: it judges the holder's `renewTime`
//! against the local wall clock and has no renew deadline to fence on, which
//! are the two rules this module exists for.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a Lease that stopped changing stays held.
    pub lease_duration: Duration,
    /// The leader gives up when no renewal succeeded for this long.
    pub renew_deadline: Duration,
    /// Between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// client-go's duration and deadline (15 s, 10 s); attempts every second
    /// rather than two, so that a standby takes a released Lease within a second.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(1),
        }
    }

    /// The renew deadline must leave time to stop before others may lead.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        // The leader renews every two retry periods: at least one renewal
        // must fall within the deadline.
        if self.retry_period * 2 >= self.renew_deadline {
            return Err(format!(
                "twice the retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// The parts of a Lease whose change proves its holder alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) holder: String,
    renew: Option<MicroTime>,
    acquire: Option<MicroTime>,
    pub(super) duration: Option<i32>,
    transitions: Option<i32>,
}

impl Record {
    pub(super) fn of(spec: Option<&LeaseSpec>) -> Self {
        let spec = spec.cloned().unwrap_or_default();
        Self {
            holder: spec.holder_identity.unwrap_or_default(),
            renew: spec.renew_time,
            acquire: spec.acquire_time,
            duration: spec.lease_duration_seconds,
            transitions: spec.lease_transitions,
        }
    }
}

/// What one attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// We hold the Lease now.
    Held,
    /// Someone else holds a live Lease.
    Other(String),
    /// A concurrent writer won the race; try again later.
    Lost,
}

pub struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    /// The record last seen and when, on our clock.
    observed: Option<(Record, Instant)>,
    /// The Lease as our last successful write left it: renewing from it is
    /// one request (a conflict sends the next attempt back to reading).
    written: Option<Lease>,
}

impl Elector {
    pub fn new(client: Client, config: ElectionConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            written: None,
        }
    }

    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    fn observe(&mut self, record: Record) {
        if self.observed.as_ref().map(|(r, _)| r) != Some(&record) {
            self.observed = Some((record, Instant::now()));
        }
    }

    /// The observed-time rule: a live holder is one whose record changed
    /// within its duration, as we saw it.
    fn held_by_other(&self) -> Option<String> {
        let (record, at) = self.observed.as_ref()?;
        if record.holder.is_empty() || record.holder == self.config.identity {
            return None;
        }
        let duration =
            Duration::from_secs(u64::try_from(record.duration.unwrap_or(15)).unwrap_or(15));
        (at.elapsed() < duration).then(|| record.holder.clone())
    }

    fn spec(&self, now: MicroTime, previous: &Record) -> LeaseSpec {
        let ours = previous.holder == self.config.identity;
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if ours {
                previous.acquire.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(
                previous.transitions.unwrap_or(0) + i32::from(!ours && !previous.holder.is_empty()),
            ),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to take or renew the Lease: a renewal is written from the
    /// Lease as we last wrote it, and only when someone else wrote it since
    /// (a conflict) is it read and judged anew.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Outcome, kube::Error> {
        if let Some(ours) = self.written.take() {
            match self.write_from(Some(ours)).await? {
                Outcome::Lost => {}
                outcome => return Ok(outcome),
            }
        }
        let current = self.api.get_opt(&self.config.name).await?;
        self.write_from(current).await
    }

    /// Takes or renews the Lease as `current` shows it (none: not created yet).
    async fn write_from(&mut self, current: Option<Lease>) -> Result<Outcome, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, &Record::of(None))),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                let record = Record::of(lease.spec.as_ref());
                self.observe(record.clone());
                if let Some(holder) = self.held_by_other() {
                    return Ok(Outcome::Other(holder));
                }
                lease.spec = Some(self.spec(now, &record));
                // The resourceVersion read stays set: a concurrent writer makes this a 409.
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(lease) => {
                self.observe(Record::of(lease.spec.as_ref()));
                self.written = Some(lease);
                Ok(Outcome::Held)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::Lost),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if we hold it: no holder, so that a standby takes
    /// it at its next attempt instead of waiting out the duration.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        self.written = None;
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let record = Record::of(lease.spec.as_ref());
        if record.holder != self.config.identity {
            return Ok(());
        }
        let now = MicroTime(jiff::Timestamp::now());
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: record.transitions,
            ..LeaseSpec::default()
        });
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    /// Waits until we lead; None when `stop` came first.
    pub async fn acquire(&mut self, stop: &mut watch::Receiver<bool>) -> Option<()> {
        let mut waiting_for = String::new();
        loop {
            // An API server that does not answer must not stall the election.
            let attempt =
                tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew());
            match attempt.await {
                Ok(Ok(Outcome::Held)) => return Some(()),
                Ok(Ok(Outcome::Other(holder))) if holder != waiting_for => {
                    tracing::info!(holder = %holder, "the Lease is held by another replica; standing by");
                    waiting_for = holder;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("cannot reach the leader Lease: {e}"),
                Err(_) => tracing::warn!(
                    "the API server did not answer about the leader Lease within {:?}; trying again",
                    self.config.renew_deadline
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
        }
    }

    /// While we lead: renews every two retry periods (standbys try every
    /// one, so that a released Lease is taken at once), each renewal a single
    /// write from the Lease as we last wrote it. Returns when `release` is
    /// asked for (after giving the Lease up), or as soon as leadership is lost:
    /// another holder seen, or no renewal within the renew deadline — each
    /// attempt is cut off at the deadline, so a hanging API server cannot
    /// keep us leading past it.
    pub async fn hold(&mut self, release: &mut watch::Receiver<bool>) -> Held {
        let mut renewed = Instant::now();
        loop {
            let released = tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period * 2) => false,
                _ = release.wait_for(|r| *r) => true,
            };
            if released {
                if let Err(e) = self.release().await {
                    tracing::warn!(
                        "could not release the leader Lease (a standby takes over when it expires): {e}"
                    );
                }
                return Held::Released;
            }
            let left = self.config.renew_deadline.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(Outcome::Held)) => renewed = Instant::now(),
                Ok(Ok(Outcome::Other(holder))) => {
                    return Held::Lost(format!("{holder} holds the Lease"));
                }
                Ok(Ok(Outcome::Lost)) => {}
                Ok(Err(e)) => tracing::warn!("cannot renew the leader Lease: {e}"),
                Err(_) => {}
            }
            if renewed.elapsed() >= self.config.renew_deadline {
                return Held::Lost(format!(
                    "no renewal succeeded within the renew deadline ({:?})",
                    self.config.renew_deadline
                ));
            }
        }
    }
}

/// How a term of leadership ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    Released,
    Lost(String),
}
