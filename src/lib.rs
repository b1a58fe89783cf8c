//! mailroom turns mailboxes into helpdesk tickets and sends helpdesk mail, declared
//! as Kubernetes resources. The mail itself is `mailroom_core`'s; this crate holds
//! the resource types, their resolution into core settings, the engine that runs
//! them, and the two adapters (the controller and standalone mode).

pub mod api;
pub mod controller;
pub mod engine;
pub mod fuzzing;
pub mod logging;
pub mod metrics;
pub mod resolve;
pub mod runtime;
pub mod signals;
pub mod standalone;
pub mod status;
pub mod submission;
