//! Reaching a mail server through a proxy: SOCKS5 (tokio-socks) or HTTP
//! CONNECT (a few lines of our own: no maintained crate speaks it over a plain
//! tokio stream). TLS and STARTTLS run end to end through the tunnel, so the
//! proxy never sees the password.

use std::fmt;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Failure, Reason, Timeouts, resolve, within};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// SOCKS5; `remote_dns` (socks5h) lets the proxy resolve the server's name.
    Socks5 { remote_dns: bool },
    /// HTTP CONNECT.
    HttpConnect,
}

/// A proxy to go through. Debug never shows the password.
#[derive(Clone)]
pub struct ProxySettings {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, SecretString)>,
}

impl fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxySettings")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("proxy.url {0:?} is not scheme://host:port with scheme socks5, socks5h or http")]
pub struct ProxyUrlError(pub String);

impl ProxySettings {
    /// The same proxy with the same credentials.
    pub fn same_as(&self, other: &ProxySettings) -> bool {
        let creds = |p: &ProxySettings| {
            p.credentials
                .as_ref()
                .map(|(u, pw)| (u.clone(), pw.expose_secret().to_owned()))
        };
        (self.kind, &self.host, self.port) == (other.kind, &other.host, other.port)
            && creds(self) == creds(other)
    }

    /// The proxy for an HTTP client (OAuth2 token requests): HTTP CONNECT with
    /// Basic proxy authentication, or SOCKS5 with the credentials in its URL.
    pub fn for_http(&self) -> Result<reqwest::Proxy, String> {
        let scheme = match self.kind {
            ProxyKind::Socks5 { remote_dns: true } => "socks5h",
            ProxyKind::Socks5 { remote_dns: false } => "socks5",
            ProxyKind::HttpConnect => "http",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let url = format!("{scheme}://{host}:{}", self.port);
        let mut url = reqwest::Url::parse(&url).map_err(|e| e.to_string())?;
        let proxy = match (&self.credentials, self.kind) {
            (Some((user, password)), ProxyKind::HttpConnect) => {
                reqwest::Proxy::all(url).map(|p| p.basic_auth(user, password.expose_secret()))
            }
            (Some((user, password)), ProxyKind::Socks5 { .. }) => {
                url.set_username(user)
                    .and_then(|()| url.set_password(Some(password.expose_secret())))
                    .map_err(|()| "the proxy credentials cannot be put in its URL".to_owned())?;
                reqwest::Proxy::all(url)
            }
            (None, _) => reqwest::Proxy::all(url),
        };
        proxy.map_err(|e| e.to_string())
    }

    /// Parses `socks5://host:port`, `socks5h://host:port` or `http://host:port`.
    pub fn parse(
        url: &str,
        credentials: Option<(String, SecretString)>,
    ) -> Result<Self, ProxyUrlError> {
        let bad = || ProxyUrlError(url.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let kind = match scheme {
            "socks5" => ProxyKind::Socks5 { remote_dns: false },
            "socks5h" => ProxyKind::Socks5 { remote_dns: true },
            "http" => ProxyKind::HttpConnect,
            _ => return Err(bad()),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            kind,
            host: host.to_owned(),
            port: port.parse().map_err(|_| bad())?,
            credentials,
        })
    }

    fn describe(&self) -> String {
        format!("proxy {}:{}", self.host, self.port)
    }
}

fn failed(proxy: &ProxySettings, what: impl fmt::Display) -> Failure {
    Failure::new(
        Reason::ProxyFailed,
        format!(
            "{}: {what}; check spec.proxy and its credentials",
            proxy.describe()
        ),
    )
}

/// Opens the tunnel to `host:port` over `tcp`, a connection to the proxy.
pub(crate) async fn tunnel(
    tcp: TcpStream,
    proxy: &ProxySettings,
    host: &str,
    port: u16,
    timeouts: Timeouts,
) -> Result<TcpStream, Failure> {
    within(timeouts.connect, "opening the proxy tunnel", async {
        match proxy.kind {
            ProxyKind::Socks5 { remote_dns } => {
                socks5(tcp, proxy, host, port, remote_dns, timeouts).await
            }
            ProxyKind::HttpConnect => connect(tcp, proxy, host, port).await,
        }
    })
    .await
}

async fn socks5(
    tcp: TcpStream,
    proxy: &ProxySettings,
    host: &str,
    port: u16,
    remote_dns: bool,
    timeouts: Timeouts,
) -> Result<TcpStream, Failure> {
    use tokio_socks::TargetAddr;
    use tokio_socks::tcp::Socks5Stream;
    let target: TargetAddr<'_> = if remote_dns {
        TargetAddr::Domain(host.into(), port)
    } else {
        let addrs = resolve(host, port, timeouts).await?;
        TargetAddr::Ip(addrs[0])
    };
    let stream = match &proxy.credentials {
        Some((user, password)) => {
            Socks5Stream::connect_with_password_and_socket(
                tcp,
                target,
                user,
                password.expose_secret(),
            )
            .await
        }
        None => Socks5Stream::connect_with_socket(tcp, target).await,
    }
    .map_err(|e| failed(proxy, format!("SOCKS5 refused: {e}")))?;
    Ok(stream.into_inner())
}

async fn connect(
    mut tcp: TcpStream,
    proxy: &ProxySettings,
    host: &str,
    port: u16,
) -> Result<TcpStream, Failure> {
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((user, password)) = &proxy.credentials {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}:{}", password.expose_secret()));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| failed(proxy, e))?;
    // Byte by byte up to the blank line: what follows belongs to the mail server.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(failed(proxy, "the CONNECT answer is too long"));
        }
        let byte = tcp
            .read_u8()
            .await
            .map_err(|e| failed(proxy, format!("no CONNECT answer: {e}")))?;
        head.push(byte);
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default().to_owned();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code.starts_with('2') {
        Ok(tcp)
    } else {
        Err(failed(proxy, format!("CONNECT refused: {status_line}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_debug_hides_the_password() {
        let p = ProxySettings::parse(
            "socks5h://proxy.example:1080",
            Some(("u".into(), "hunter2".into())),
        )
        .unwrap();
        assert_eq!(
            (p.kind, p.host.as_str(), p.port),
            (
                ProxyKind::Socks5 { remote_dns: true },
                "proxy.example",
                1080
            )
        );
        assert!(!format!("{p:?}").contains("hunter2"));
        assert_eq!(
            ProxySettings::parse("http://[::1]:3128/", None)
                .unwrap()
                .host,
            "::1"
        );
        assert_eq!(
            ProxySettings::parse("socks5://h:1", None).unwrap().kind,
            ProxyKind::Socks5 { remote_dns: false }
        );
        for bad in ["ftp://h:1", "socks5://h", "http://:80", "h:80"] {
            assert!(ProxySettings::parse(bad, None).is_err(), "{bad}");
        }
    }
}
