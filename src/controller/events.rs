//! Events: what a platform team sees in `kubectl describe` — worker starts and
//! stops, Ready changes with their reason, rejections and failovers.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};

use super::Context;
use crate::engine::Computed;

pub(super) async fn publish(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
    action: &str,
) {
    if !ctx.writes {
        return;
    }
    let ev = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, reference).await {
        tracing::warn!("cannot record an event: {e}");
    }
}

/// Events for what the engine says changed in a status just written.
pub(super) async fn for_change<S>(
    ctx: &Context,
    reference: &ObjectReference,
    computed: &Computed<S>,
) {
    if let Some(ready) = &computed.ready_changed {
        match (ready.status.as_str(), ready.reason.as_str()) {
            ("True", _) => {
                publish(
                    ctx,
                    reference,
                    EventType::Normal,
                    "ConnectionVerified",
                    ready.message.clone(),
                    "Test",
                )
                .await
            }
            (_, "Connecting") => {}
            (_, reason) => {
                publish(
                    ctx,
                    reference,
                    EventType::Warning,
                    reason,
                    ready.message.clone(),
                    "Test",
                )
                .await
            }
        }
    }
    if let Some(message) = &computed.rejecting {
        publish(
            ctx,
            reference,
            EventType::Warning,
            "MailRejected",
            message.clone(),
            "Filter",
        )
        .await;
    }
}
