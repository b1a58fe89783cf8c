//! Server and port defaults from provider, protocol and security type. One function
//! decides them, so that status, the connection test and the workers agree; the
//! result is shown in status and never written back into spec.

use std::fmt;

use crate::vocab::{IncomingProtocol, Provider, SecurityType};

/// The three protocols mailroom speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MailProtocol {
    Imap,
    Pop3,
    Smtp,
}

impl fmt::Display for MailProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Imap => "IMAP",
            Self::Pop3 => "POP3",
            Self::Smtp => "SMTP",
        })
    }
}

impl From<IncomingProtocol> for MailProtocol {
    fn from(p: IncomingProtocol) -> Self {
        match p {
            IncomingProtocol::Imap => Self::Imap,
            IncomingProtocol::Pop3 => Self::Pop3,
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub security: SecurityType,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DefaultsError {
    #[error(
        "no server given and provider Other has no preset: set spec.server to the {protocol} server's host name"
    )]
    ServerRequired { protocol: MailProtocol },
    #[error("port {port} is outside 1..65535: set spec.port to a valid port or remove it")]
    PortOutOfRange { port: i32 },
}

/// The server a provider preset uses for a protocol.
pub(crate) fn preset_server(provider: Provider, protocol: MailProtocol) -> Option<&'static str> {
    match (provider, protocol) {
        (Provider::Gmail, MailProtocol::Imap) => Some("imap.gmail.com"),
        (Provider::Gmail, MailProtocol::Pop3) => Some("pop.gmail.com"),
        (Provider::Gmail, MailProtocol::Smtp) => Some("smtp.gmail.com"),
        (Provider::Microsoft365, MailProtocol::Imap | MailProtocol::Pop3) => {
            Some("outlook.office365.com")
        }
        (Provider::Microsoft365, MailProtocol::Smtp) => Some("smtp.office365.com"),
        (Provider::Other, _) => None,
    }
}

/// The well-known port of a protocol with a security type.
pub(crate) fn default_port(protocol: MailProtocol, security: SecurityType) -> u16 {
    match (protocol, security) {
        (MailProtocol::Imap, SecurityType::Ssl) => 993,
        (MailProtocol::Imap, SecurityType::Tls) => 143,
        (MailProtocol::Pop3, SecurityType::Ssl) => 995,
        (MailProtocol::Pop3, SecurityType::Tls) => 110,
        (MailProtocol::Smtp, SecurityType::Ssl) => 465,
        (MailProtocol::Smtp, SecurityType::Tls) => 587,
    }
}

/// The endpoint in effect: the spec's server and port where given, else the
/// provider's preset server and the protocol's port for the security type.
pub fn resolve_endpoint(
    protocol: MailProtocol,
    provider: Provider,
    security: SecurityType,
    server: Option<&str>,
    port: Option<i32>,
) -> Result<Endpoint, DefaultsError> {
    let host = match server {
        Some(s) => s.to_owned(),
        None => preset_server(provider, protocol)
            .ok_or(DefaultsError::ServerRequired { protocol })?
            .to_owned(),
    };
    let port = match port {
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(DefaultsError::PortOutOfRange { port: p })?,
        None => default_port(protocol, security),
    };
    Ok(Endpoint {
        host,
        port,
        security,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use MailProtocol::*;
    use Provider::*;
    use SecurityType::*;

    #[test]
    fn default_resolution_table() {
        let table = [
            (Imap, Gmail, Ssl, "imap.gmail.com", 993),
            (Imap, Gmail, Tls, "imap.gmail.com", 143),
            (Pop3, Gmail, Ssl, "pop.gmail.com", 995),
            (Pop3, Gmail, Tls, "pop.gmail.com", 110),
            (Smtp, Gmail, Ssl, "smtp.gmail.com", 465),
            (Smtp, Gmail, Tls, "smtp.gmail.com", 587),
            (Imap, Microsoft365, Ssl, "outlook.office365.com", 993),
            (Imap, Microsoft365, Tls, "outlook.office365.com", 143),
            (Pop3, Microsoft365, Ssl, "outlook.office365.com", 995),
            (Pop3, Microsoft365, Tls, "outlook.office365.com", 110),
            (Smtp, Microsoft365, Ssl, "smtp.office365.com", 465),
            (Smtp, Microsoft365, Tls, "smtp.office365.com", 587),
        ];
        for (protocol, provider, security, host, port) in table {
            let got = resolve_endpoint(protocol, provider, security, None, None).unwrap();
            assert_eq!(
                got,
                Endpoint {
                    host: host.into(),
                    port,
                    security
                },
                "{protocol} {provider:?} {security:?}"
            );
        }
        for protocol in [Imap, Pop3, Smtp] {
            for security in [Ssl, Tls] {
                assert_eq!(
                    resolve_endpoint(protocol, Other, security, None, None),
                    Err(DefaultsError::ServerRequired { protocol })
                );
                let got =
                    resolve_endpoint(protocol, Other, security, Some("mail.example.com"), None)
                        .unwrap();
                assert_eq!(got.host, "mail.example.com");
                assert_eq!(got.port, default_port(protocol, security));
            }
        }
    }

    #[test]
    fn explicit_server_and_port_win_over_presets() {
        let got = resolve_endpoint(Imap, Gmail, Ssl, Some("127.0.0.1"), Some(10993)).unwrap();
        assert_eq!(got.host, "127.0.0.1");
        assert_eq!(got.port, 10993);
    }

    #[test]
    fn out_of_range_port_is_refused() {
        for port in [0, -1, 65536] {
            assert_eq!(
                resolve_endpoint(Smtp, Gmail, Tls, None, Some(port)),
                Err(DefaultsError::PortOutOfRange { port })
            );
        }
    }
}
