//! What a sender runs with: an OutgoingEmailServer's spec resolved, defaults
//! applied, the password read, the recipient filter compiled. Built once per
//! configuration.

use crate::config::{Credentials, Endpoint};
use crate::connection::{ProxySettings, Timeouts, TlsOptions};
use crate::filter::Filter;
use crate::vocab::Provider;

#[derive(Clone, Debug)]
pub struct OutgoingSettings {
    pub endpoint: Endpoint,
    pub provider: Provider,
    /// None when `authentication.required` is false.
    pub credentials: Option<Credentials>,
    pub tls: TlsOptions,
    /// The proxy to connect through, if any.
    pub proxy: Option<ProxySettings>,
    pub timeouts: Timeouts,
    /// The From address and the envelope sender.
    pub email: String,
    pub sender_name: Option<String>,
    pub reply_to: Option<String>,
    /// Right-hand side of generated Message-IDs, and the EHLO name: the From
    /// domain unless configured, never the host's name.
    pub message_id_domain: String,
    pub filter: Option<Filter>,
    pub enabled: bool,
    pub primary: bool,
}
