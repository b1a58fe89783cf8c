//! The one place where a resource's spec becomes core settings: defaults
//! applied, Secrets read, patterns, filters, the ticket sink and the
//! acknowledgements built. Both adapters resolve through here; the core never
//! sees a spec.

mod incoming;
mod outgoing;
mod secrets;

pub use incoming::{ResolvedIncoming, incoming, incoming_settings};
pub use outgoing::outgoing;
pub use secrets::{SecretError, SecretSource, Sources};

use mailroom_core::connection::{Failure, Reason};

/// A spec that cannot be used as it is; `field` is its path in the spec.
fn invalid(field: &str, what: impl std::fmt::Display) -> Failure {
    Failure::new(Reason::InvalidConfig, format!("spec.{field}: {what}"))
}
