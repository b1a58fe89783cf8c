//! What a fetch worker runs with: an IncomingEmailServer's spec resolved,
//! defaults applied, secrets read, patterns and the filter compiled. Built
//! once per configuration; the worker never looks at a spec.

use std::time::Duration;

use regex::Regex;

use crate::config::ServerSettings;
use crate::filter::{Filter, OwnAddresses, RateLimit};
use crate::vocab::{AfterProcessing, FirstStart, IncomingProtocol, Mode};

/// Default pattern of a ticket reference in a subject: `[#1234]`.
pub const DEFAULT_REFERENCE_PATTERN: &str = r"\[#(\d+)\]";
/// Folder for unparseable or oversized mail when the spec names none.
pub const DEFAULT_QUARANTINE_FOLDER: &str = "Quarantine";

/// Fields copied onto every ticket of this mailbox.
#[derive(Clone, Debug)]
pub struct TicketSettings {
    /// `namespace/name` of the resource.
    pub mailbox: String,
    pub technician_group: Option<String>,
    pub category: Option<String>,
    pub reference: Regex,
    /// The sink's own subject tag (Request Tracker's `[rtname #123]`), also a
    /// reference.
    pub sink_tag: Option<Regex>,
}

#[derive(Clone, Debug)]
pub struct IncomingSettings {
    pub server: ServerSettings,
    pub protocol: IncomingProtocol,
    pub mailbox: String,
    pub after_processing: AfterProcessing,
    pub first_start: FirstStart,
    pub move_to: Option<String>,
    pub quarantine_folder: String,
    pub max_message_size: u64,
    pub real_time: bool,
    pub scan_interval: Duration,
    pub mode: Mode,
    pub ticket: TicketSettings,
    pub filter: Option<Filter>,
    pub rate_limit: RateLimit,
    /// From addresses of our own outgoing servers: mail from them is a loop.
    /// The adapters fill it from the namespace's OutgoingEmailServers, and
    /// update it in place.
    pub own_addresses: OwnAddresses,
}
