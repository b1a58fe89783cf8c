//! What a spec means once defaults are applied: endpoints, credentials, sizes.
//! Core code: it knows nothing of Kubernetes and is shared by the controller and
//! standalone mode.

pub mod defaults;
pub mod secret;
pub mod server;
pub mod size;

pub use defaults::{DefaultsError, Endpoint, MailProtocol, resolve_endpoint};
pub use secret::normalize_password;
pub use server::{Credentials, ServerSettings, authentication_hint};
pub use size::{SizeError, parse_size};
