//! mailroom's mail core: what a resource means once resolved, the protocol
//! clients and the staged connection test, filters and loop protection, the
//! ticket document, the sinks and the fetch cursors. It knows nothing of
//! Kubernetes: its manifest has no kube or k8s-openapi dependency, and the
//! controller and standalone mode both run it through one engine.

pub mod config;
pub mod connection;
pub mod filter;
pub mod fuzzing;
pub mod incoming;
pub mod oauth2;
pub mod outgoing;
pub mod sinks;
pub mod state;
pub mod sync;
pub mod ticket;
pub mod vocab;
