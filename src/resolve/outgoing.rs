//! An OutgoingEmailServer's spec, resolved into what its sender runs with.

use super::invalid;
use super::secrets::{AuthRef, Sources, credentials, proxy_settings, tls_options};
use crate::api::OutgoingEmailServerSpec;
use mailroom_core::config::{MailProtocol, resolve_endpoint};
use mailroom_core::connection::{Failure, Timeouts};
use mailroom_core::filter::Filter;
use mailroom_core::outgoing::settings::OutgoingSettings;

/// Resolves a spec in `sources.namespace`.
pub fn outgoing(
    spec: &OutgoingEmailServerSpec,
    sources: Sources<'_>,
) -> Result<OutgoingSettings, Failure> {
    let (secrets, config_maps) = (sources.secrets, sources.config_maps);
    let endpoint = resolve_endpoint(
        MailProtocol::Smtp,
        spec.provider,
        spec.security_type,
        spec.server.as_deref(),
        spec.port,
    )
    .map_err(|e| invalid("server", e))?;
    let auth = &spec.authentication;
    let proxy = proxy_settings(spec.proxy.as_ref(), secrets)?;
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
            proxy.as_ref(),
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
                invalid(
                    "email",
                    format!("{:?} has no domain; set a full address", spec.email),
                )
            })?,
    };
    Ok(OutgoingSettings {
        endpoint,
        provider: spec.provider,
        credentials,
        tls: tls_options(spec.tls.as_ref(), secrets, config_maps)?,
        proxy,
        timeouts: Timeouts::default(),
        email: spec.email.clone(),
        sender_name: spec.sender_name.clone(),
        reply_to: spec.reply_to.clone(),
        message_id_domain,
        filter: spec
            .filter
            .as_ref()
            .map(|f| Filter::compile(f.type_, &f.emails, &f.domains, &[])),
        enabled: spec.enabled,
        primary: spec.primary,
    })
}
