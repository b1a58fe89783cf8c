//! An OutgoingEmailServer's spec, resolved: defaults applied, the password read,
//! the recipient filter compiled. Built once per configuration.

use crate::api::OutgoingEmailServerSpec;
use crate::config::server::{credentials, proxy_settings, tls_options};
use crate::config::{AuthRef, Credentials, Endpoint, MailProtocol, Sources, resolve_endpoint};
use crate::connection::{Failure, ProxySettings, Reason, Timeouts, TlsOptions};
use crate::filter::Filter;

#[derive(Clone, Debug)]
pub struct OutgoingSettings {
    pub endpoint: Endpoint,
    pub provider: crate::api::Provider,
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

impl OutgoingSettings {
    /// Resolves a spec in `sources.namespace`.
    pub fn resolve(spec: &OutgoingEmailServerSpec, sources: Sources<'_>) -> Result<Self, Failure> {
        let (secrets, config_maps) = (sources.secrets, sources.config_maps);
        let endpoint = resolve_endpoint(
            MailProtocol::Smtp,
            spec.provider,
            spec.security_type,
            spec.server.as_deref(),
            spec.port,
        )
        .map_err(|e| Failure::new(Reason::ProtocolError, e.to_string()))?;
        let auth = &spec.authentication;
        let credentials = if auth.required {
            Some(credentials(
                sources,
                spec.provider,
                AuthRef {
                    type_: auth.type_,
                    username: auth.username.as_deref().unwrap_or(&spec.email),
                    password: auth.password_secret_ref.as_ref(),
                    oauth2: auth.oauth2.as_ref(),
                },
            )?)
        } else {
            None
        };
        let message_id_domain = match &spec.message_id_domain {
            Some(d) => d.clone(),
            None => spec
                .email
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .ok_or_else(|| {
                    Failure::new(
                        Reason::ProtocolError,
                        format!("email {:?} has no domain; set a full address", spec.email),
                    )
                })?,
        };
        Ok(Self {
            endpoint,
            provider: spec.provider,
            credentials,
            tls: tls_options(spec.tls.as_ref(), secrets, config_maps)?,
            proxy: proxy_settings(spec.proxy.as_ref(), secrets)?,
            timeouts: Timeouts::default(),
            email: spec.email.clone(),
            sender_name: spec.sender_name.clone(),
            reply_to: spec.reply_to.clone(),
            message_id_domain,
            filter: Filter::recipients(spec.filter.as_ref()),
            enabled: spec.enabled,
            primary: spec.primary,
        })
    }
}
