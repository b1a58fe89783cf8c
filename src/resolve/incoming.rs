//! An IncomingEmailServer's spec, resolved into what its worker runs with.

use std::collections::HashMap;
use std::path::Path;

use regex::Regex;

use super::invalid;
use super::secrets::{AuthRef, Sources, credentials, proxy_settings, secret_text, tls_options};
use crate::api::{IncomingEmailServerSpec, RequestTrackerSinkSpec, SinkSpec, TicketSpec};
use mailroom_core::config::{MailProtocol, ServerSettings, parse_size, resolve_endpoint};
use mailroom_core::connection::{Failure, Reason, Timeouts, TlsOptions};
use mailroom_core::filter::{Filter, RateLimit};
use mailroom_core::incoming::IncomingSettings;
use mailroom_core::incoming::settings::{
    DEFAULT_QUARANTINE_FOLDER, DEFAULT_REFERENCE_PATTERN, TicketSettings,
};
use mailroom_core::outgoing::ack::AckSettings;
use mailroom_core::sinks::{DirectorySink, RequestTrackerSink, RtFields, Sink, WebhookSink};
use mailroom_core::sync::unpoisoned;
use mailroom_core::vocab::{AfterProcessing, IncomingProtocol, ResourceId};

/// Everything a fetch worker is started with.
#[derive(Debug)]
pub struct ResolvedIncoming {
    pub settings: IncomingSettings,
    pub sink: Sink,
    /// The OutgoingEmailServer that acknowledges, and what it says; None when
    /// acknowledgements are off.
    pub acknowledgements: Option<(String, AckSettings)>,
}

/// A count from a spec as a limit of at least one.
fn at_least_one(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(1).max(1)
}

/// Resolves the spec of `id`. `default_sink` is where tickets go when the spec
/// names no sink; with neither, nothing may be fetched (`NoSink`).
pub fn incoming(
    id: &ResourceId,
    spec: &IncomingEmailServerSpec,
    sources: Sources<'_>,
    default_sink: Option<&Path>,
) -> Result<ResolvedIncoming, Failure> {
    let settings = incoming_settings(id, spec, sources)?;
    let sink = sink(&spec.ticket, default_sink, sources)?;
    // Acknowledgements carry the tag the helpdesk itself threads by.
    let tag = match spec
        .ticket
        .sink
        .as_ref()
        .and_then(|s| s.request_tracker.as_ref())
    {
        Some(RequestTrackerSinkSpec {
            rt_name: Some(name),
            ..
        }) => format!("[{name} #{{reference}}]"),
        _ => "[#{reference}]".to_owned(),
    };
    let a = &spec.acknowledgements;
    let acknowledgements = match (&spec.outgoing_server_ref, a.enabled) {
        (Some(out), true) => Some((
            out.name.clone(),
            AckSettings {
                subject: a.subject.clone(),
                text: a.text.clone(),
                limit: RateLimit {
                    max: at_least_one(a.max_per_sender),
                    window: a.window.into(),
                },
                max_age: a.max_age.into(),
                tag,
            },
        )),
        _ => None,
    };
    Ok(ResolvedIncoming {
        settings,
        sink,
        acknowledgements,
    })
}

/// What the worker (or the connection test) runs with: no sink needed.
pub fn incoming_settings(
    id: &ResourceId,
    spec: &IncomingEmailServerSpec,
    sources: Sources<'_>,
) -> Result<IncomingSettings, Failure> {
    let Sources {
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
    .map_err(|e| invalid("server", e))?;
    let proxy = proxy_settings(spec.proxy.as_ref(), secrets)?;
    let credentials = credentials(
        sources,
        spec.provider,
        AuthRef {
            type_: spec.auth.type_,
            username: spec.auth.username.as_deref().unwrap_or(&spec.email),
            password: spec.auth.password_secret_ref.as_ref(),
            oauth2: spec.auth.oauth2.as_ref(),
        },
        proxy.as_ref(),
    )?;
    let tls = tls_options(spec.tls.as_ref(), secrets, config_maps)?;
    let pattern = spec
        .ticket
        .reference_pattern
        .as_deref()
        .unwrap_or(DEFAULT_REFERENCE_PATTERN);
    let reference = compiled(pattern).map_err(|e| {
        invalid(
            "ticket.referencePattern",
            format!("{pattern:?} is not a valid regular expression: {e}"),
        )
    })?;
    let max_message_size =
        parse_size(&spec.max_message_size).map_err(|e| invalid("maxMessageSize", e))?;
    let after_processing = spec.after_processing.unwrap_or(match spec.protocol {
        IncomingProtocol::Imap => AfterProcessing::MarkSeen,
        IncomingProtocol::Pop3 => AfterProcessing::Keep,
    });
    Ok(IncomingSettings {
        server: ServerSettings {
            endpoint,
            provider: spec.provider,
            credentials,
            tls,
            proxy,
            timeouts: Timeouts::default(),
        },
        protocol: spec.protocol,
        mailbox: spec.mailbox.clone(),
        after_processing,
        first_start: spec.first_start,
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
            mailbox: id.to_string(),
            technician_group: spec.ticket.technician_group.clone(),
            category: spec.ticket.category.clone(),
            reference,
            sink_tag: spec
                .ticket
                .sink
                .as_ref()
                .and_then(|s| s.request_tracker.as_ref())
                .and_then(|rt| rt.rt_name.as_deref())
                .map(|name| compiled(&format!(r"(?i)\[{}\s+#(\d+)\s*\]", regex::escape(name))))
                .transpose()
                .map_err(|e| invalid("ticket.sink.requestTracker.rtName", e.to_string()))?,
        },
        filter: spec
            .filter
            .as_ref()
            .map(|f| Filter::compile(f.type_, &f.emails, &f.domains, &f.keywords)),
        rate_limit: RateLimit {
            max: at_least_one(spec.loop_protection.max_tickets_per_sender),
            window: spec.loop_protection.window.into(),
        },
        own_addresses: Default::default(),
    })
}

/// The sink the spec names, else a directory at `default_dir`, else none.
fn sink(
    ticket: &TicketSpec,
    default_dir: Option<&Path>,
    sources: Sources<'_>,
) -> Result<Sink, Failure> {
    let setup =
        |e: mailroom_core::sinks::SinkError| Failure::new(Reason::SinkSetupFailed, e.to_string());
    match &ticket.sink {
        Some(SinkSpec {
            webhook: Some(w), ..
        }) => {
            let key = w
                .signing_secret_ref
                .as_ref()
                .map(|r| secret_text(sources.secrets, r))
                .transpose()?;
            WebhookSink::new(
                &w.url,
                key.as_deref(),
                w.timeout.into(),
                &TlsOptions::default(),
            )
            .map(|s| match w.max_in_flight {
                Some(n) => s.with_max_in_flight(n.into()),
                None => s,
            })
            .map(Sink::Webhook)
            .map_err(setup)
        }
        Some(SinkSpec {
            request_tracker: Some(rt),
            ..
        }) => {
            let token = secret_text(sources.secrets, &rt.token_secret_ref)?;
            let fields = RtFields {
                queue: rt
                    .queue
                    .clone()
                    .or_else(|| ticket.technician_group.clone())
                    .unwrap_or_else(|| "General".into()),
                category: rt.category_field.clone(),
                message: rt.message_field.clone(),
            };
            RequestTrackerSink::new(
                &rt.url,
                &token,
                fields,
                rt.timeout.into(),
                &TlsOptions::default(),
            )
            .map(|s| match rt.max_in_flight {
                Some(n) => s.with_max_in_flight(n.into()),
                None => s,
            })
            .map(Sink::RequestTracker)
            .map_err(setup)
        }
        Some(SinkSpec {
            directory: Some(d), ..
        }) => DirectorySink::open(&d.path)
            .map(Sink::Directory)
            .map_err(setup),
        _ => match default_dir {
            Some(dir) => DirectorySink::open(dir).map(Sink::Directory).map_err(setup),
            None => Err(Failure::new(
                Reason::NoSink,
                "no ticket sink: set spec.ticket.sink (webhook, directory or requestTracker), or start mailroom with a default sink (--default-sink-dir); nothing is fetched until then",
            )),
        },
    }
}

/// Compiled reference patterns, shared: a compiled pattern holds about 30 KiB
/// of automata, and most resources use the default one. A clone shares the
/// compiled program (each clone keeps only its own small matching caches).
fn compiled(pattern: &str) -> Result<Regex, regex::Error> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<HashMap<String, Regex>>> =
        std::sync::OnceLock::new();
    // Distinct patterns are few; a bound keeps a stream of edits from growing it.
    const MAX: usize = 1024;
    let cache = CACHE.get_or_init(Default::default);
    if let Some(r) = unpoisoned(cache).get(pattern) {
        return Ok(r.clone());
    }
    let regex = Regex::new(pattern)?;
    let mut cache = unpoisoned(cache);
    if cache.len() >= MAX {
        cache.clear();
    }
    cache.insert(pattern.to_owned(), regex.clone());
    Ok(regex)
}
