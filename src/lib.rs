//! mailroom turns mailboxes into helpdesk tickets and sends helpdesk mail, declared
//! as Kubernetes resources.

pub mod api;
pub mod config;
pub mod connection;
pub mod controller;
pub mod filter;
pub mod incoming;
pub mod oauth2;
pub mod outgoing;
pub mod runtime;
pub mod signals;
pub mod sinks;
pub mod standalone;
pub mod state;
pub mod status;
pub mod submission;
pub mod ticket;
