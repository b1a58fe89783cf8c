//! An IncomingEmailServer's spec, resolved: defaults applied, secrets read,
//! patterns compiled. Built once per configuration; the worker never looks at
//! the spec again.

use std::time::Duration;

use regex::Regex;

use crate::api::{
    AfterProcessing, IncomingEmailServerSpec, IncomingFilter, IncomingProtocol, Mode,
};
use crate::config::server::{credentials, proxy_settings, tls_options};
use crate::config::{AuthRef, MailProtocol, ServerSettings, Sources, parse_size, resolve_endpoint};
use crate::connection::{Failure, Reason, Timeouts};
use crate::filter::RateLimit;

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
}

#[derive(Clone, Debug)]
pub struct IncomingSettings {
    pub server: ServerSettings,
    pub protocol: IncomingProtocol,
    pub mailbox: String,
    pub after_processing: AfterProcessing,
    pub move_to: Option<String>,
    pub quarantine_folder: String,
    pub max_message_size: u64,
    pub real_time: bool,
    pub scan_interval: Duration,
    pub mode: Mode,
    pub ticket: TicketSettings,
    pub filter: Option<IncomingFilter>,
    pub rate_limit: RateLimit,
    /// From addresses of our own outgoing servers: mail from them is a loop.
    /// The adapters fill it from the namespace's OutgoingEmailServers.
    pub own_addresses: Vec<String>,
}

fn config_error(message: String) -> Failure {
    Failure::new(Reason::ProtocolError, message)
}

impl IncomingSettings {
    /// Resolves the spec of resource `name` in `sources.namespace`.
    pub fn resolve(
        name: &str,
        spec: &IncomingEmailServerSpec,
        sources: Sources<'_>,
    ) -> Result<Self, Failure> {
        let Sources {
            namespace,
            secrets,
            config_maps,
            ..
        } = sources;
        let endpoint = resolve_endpoint(
            MailProtocol::from(spec.protocol),
            spec.provider,
            spec.security_type,
            spec.server.as_deref(),
            spec.port,
        )
        .map_err(|e| config_error(e.to_string()))?;
        let credentials = credentials(
            sources,
            spec.provider,
            AuthRef {
                type_: spec.auth.type_,
                username: spec.auth.username.as_deref().unwrap_or(&spec.email),
                password: spec.auth.password_secret_ref.as_ref(),
                oauth2: spec.auth.oauth2.as_ref(),
            },
        )?;
        let tls = tls_options(spec.tls.as_ref(), secrets, config_maps)?;
        let pattern = spec
            .ticket
            .reference_pattern
            .as_deref()
            .unwrap_or(DEFAULT_REFERENCE_PATTERN);
        let reference = Regex::new(pattern).map_err(|e| {
            config_error(format!(
                "ticket.referencePattern {pattern:?} is not a valid regular expression: {e}"
            ))
        })?;
        let max_message_size = parse_size(&spec.max_message_size)
            .map_err(|e| config_error(format!("maxMessageSize: {e}")))?;
        let after_processing = spec.after_processing.unwrap_or(match spec.protocol {
            IncomingProtocol::Imap => AfterProcessing::MarkSeen,
            IncomingProtocol::Pop3 => AfterProcessing::Keep,
        });
        Ok(Self {
            server: ServerSettings {
                endpoint,
                provider: spec.provider,
                credentials,
                tls,
                proxy: proxy_settings(spec.proxy.as_ref(), secrets)?,
                timeouts: Timeouts::default(),
            },
            protocol: spec.protocol,
            mailbox: spec.mailbox.clone(),
            after_processing,
            move_to: spec.move_to.clone(),
            quarantine_folder: spec
                .quarantine_folder
                .clone()
                .unwrap_or_else(|| DEFAULT_QUARANTINE_FOLDER.to_owned()),
            max_message_size,
            real_time: spec.real_time_scanning,
            scan_interval: spec.scan_interval.into(),
            mode: spec.mode,
            ticket: TicketSettings {
                mailbox: format!("{namespace}/{name}"),
                technician_group: spec.ticket.technician_group.clone(),
                category: spec.ticket.category.clone(),
                reference,
            },
            filter: spec.filter.clone(),
            rate_limit: RateLimit {
                max: u32::try_from(spec.loop_protection.max_tickets_per_sender)
                    .unwrap_or(1)
                    .max(1),
                window: spec.loop_protection.window.into(),
            },
            own_addresses: Vec::new(),
        })
    }
}
