//! A running OutgoingEmailServer: registered in the Outbox for sending, its
//! connection tested.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use tokio::task::JoinHandle;

use super::{OnChange, Shared, username};
use crate::api::{EffectiveSettings, OutgoingEmailServerSpec, OutgoingEmailServerStatus};
use crate::metrics::{Counters, Sample};
use crate::resolve::{self, SecretSource, Sources};
use crate::status::{self, Health};
use mailroom_core::config::Credentials;
use mailroom_core::connection::Reason;
use mailroom_core::oauth2::Tokens;
use mailroom_core::outgoing::{DEFAULT_POOL_SIZE, Outbox, OutgoingServer, SendStats};
use mailroom_core::sync::unpoisoned;
use mailroom_core::vocab::ResourceId;

#[derive(Debug)]
pub struct OutgoingRuntime {
    pub shared: Shared,
    pub stats: Arc<SendStats>,
    test: Option<JoinHandle<()>>,
    effective: Option<EffectiveSettings>,
    /// For the OAuth2 part of status.
    credentials: Option<Credentials>,
}

impl OutgoingRuntime {
    /// Resolves, registers the server in `outbox` (replacing an older one) and
    /// starts its connection test. `stats` carry over from an older runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        id: &ResourceId,
        spec: &OutgoingEmailServerSpec,
        secrets: &dyn SecretSource,
        config_maps: &dyn SecretSource,
        tokens: &Tokens,
        outbox: &Outbox,
        stats: Arc<SendStats>,
        on_change: Option<OnChange>,
    ) -> Self {
        let (namespace, name) = (id.namespace.as_str(), id.name.as_str());
        let resource = format!("OutgoingEmailServer {id}");
        let shared = Shared::new(Health::Connecting, on_change);
        let mut runtime = Self {
            shared,
            stats,
            test: None,
            effective: None,
            credentials: None,
        };
        let sources = Sources {
            namespace,
            secrets,
            config_maps,
            tokens,
        };
        let settings = match resolve::outgoing(spec, sources) {
            Ok(s) => s,
            Err(f) => {
                tracing::warn!(resource = %resource, reason = %f.reason, "{}", f.message);
                outbox.remove(namespace, name);
                runtime.shared.update(|l| l.health = Health::Failing(f));
                return runtime;
            }
        };
        runtime.effective = Some(EffectiveSettings {
            server: settings.endpoint.host.clone(),
            port: i32::from(settings.endpoint.port),
            security_type: Some(settings.endpoint.security),
            username: username(settings.credentials.as_ref()),
            scanning: None,
            after_processing: None,
        });
        runtime.credentials = settings.credentials.clone();
        let enabled = settings.enabled;
        outbox.insert(OutgoingServer::new(
            namespace,
            name,
            settings.clone(),
            runtime.stats.clone(),
            DEFAULT_POOL_SIZE,
        ));
        tracing::info!(resource = %resource, "configured");
        if !enabled {
            runtime.shared.update(|l| l.health = Health::Disabled);
            return runtime;
        }
        let shared = runtime.shared.clone();
        runtime.test = Some(tokio::spawn(async move {
            let report = mailroom_core::outgoing::smtp::test_connection(&settings).await;
            if report.reason == Reason::Connected {
                tracing::info!(resource = %resource, "connection test passed");
            } else {
                tracing::warn!(resource = %resource, reason = %report.reason, "connection test failed: {}", report.message);
            }
            shared.update(|l| {
                l.health = status::health_of(&report);
                l.report = Some(report);
            });
        }));
        runtime
    }

    /// The OAuth2 grant's token times, when the server signs in with OAuth2.
    pub(crate) fn oauth2(&self) -> Option<mailroom_core::oauth2::TokenInfo> {
        self.credentials.as_ref()?.token_info()
    }

    /// What metrics read of it.
    pub(crate) fn sample(&self, id: &ResourceId) -> Sample {
        Sample {
            kind: "OutgoingEmailServer",
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            health: self.shared.clone(),
            credentials: self.credentials.clone(),
            counters: Counters::Outgoing(self.stats.clone()),
        }
    }

    /// Stops a connection test still running.
    pub fn stop(&mut self) {
        if let Some(t) = self.test.take() {
            t.abort();
        }
    }
}

impl Drop for OutgoingRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

impl super::Runtime for OutgoingRuntime {
    type Status = OutgoingEmailServerStatus;
    const KIND: &'static str = "OutgoingEmailServer";

    fn status(
        &self,
        generation: Option<i64>,
        previous: &[Condition],
        rejecting_since: jiff::Timestamp,
        now: jiff::Timestamp,
    ) -> OutgoingEmailServerStatus {
        let filter = {
            let log = unpoisoned(&self.stats.rejections);
            status::filter_rejecting(&log, rejecting_since, generation, now)
        };
        let live = self.shared.lock();
        OutgoingEmailServerStatus {
            observed_generation: generation,
            conditions: status::conditions(&live.health, Some(filter), generation, previous, now),
            effective: self.effective.clone(),
            connection: live.report.as_ref().map(status::connection_status),
            next_retry_at: None,
            stats: Some(status::outgoing_stats(&self.stats)),
            oauth2: self.oauth2().map(status::oauth2_status),
            recent_rejections: status::recent_rejections(&unpoisoned(&self.stats.rejections)),
        }
    }

    fn conditions(status: &OutgoingEmailServerStatus) -> &[Condition] {
        &status.conditions
    }

    fn conditions_mut(status: &mut OutgoingEmailServerStatus) -> &mut Vec<Condition> {
        &mut status.conditions
    }
}
