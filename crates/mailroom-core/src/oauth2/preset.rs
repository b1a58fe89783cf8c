//! Token and consent endpoints and mail scopes of the providers we know, so
//! that a Gmail or Microsoft 365 resource needs only its Secret.

use crate::vocab::Provider;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    pub token_url: &'static str,
    pub authorize_url: &'static str,
    /// Scopes for IMAP, POP3 and SMTP at once, so one refresh token serves the
    /// incoming and the outgoing server of a mailbox.
    pub scopes: &'static [&'static str],
}

/// Google: one scope covers IMAP, POP3 and SMTP.
pub const GOOGLE: Preset = Preset {
    token_url: "https://oauth2.googleapis.com/token",
    authorize_url: "https://accounts.google.com/o/oauth2/v2/auth",
    scopes: &["https://mail.google.com/"],
};

/// Microsoft identity platform, multi-tenant endpoints (a single-tenant app
/// sets `tokenUrl` with its tenant id). `offline_access` is what yields a
/// refresh token.
pub const MICROSOFT: Preset = Preset {
    token_url: "https://login.microsoftonline.com/common/oauth2/v2.0/token",
    authorize_url: "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
    scopes: &[
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "https://outlook.office.com/POP.AccessAsUser.All",
        "https://outlook.office.com/SMTP.Send",
        "offline_access",
    ],
};

impl Preset {
    pub fn of(provider: Provider) -> Option<Preset> {
        match provider {
            Provider::Gmail => Some(GOOGLE),
            Provider::Microsoft365 => Some(MICROSOFT),
            Provider::Other => None,
        }
    }
}

/// Whether a token or consent URL may be used: HTTPS, or plain HTTP to a
/// loopback address (a provider on the same machine, as RFC 8252 allows for
/// native apps). Anything else would send secrets in clear.
pub fn url_allowed(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_allowed() {
        assert!(url_allowed("https://oauth2.googleapis.com/token"));
        assert!(url_allowed("http://127.0.0.1:8080/token"));
        assert!(url_allowed("http://localhost/token"));
        assert!(url_allowed("http://[::1]:9/t"));
        assert!(!url_allowed("http://example.com/token"));
        assert!(!url_allowed("http://127.0.0.1.example.com/token"));
        assert!(!url_allowed("ftp://127.0.0.1/token"));
    }

    #[test]
    fn presets_cover_the_mail_providers() {
        assert_eq!(Preset::of(Provider::Gmail), Some(GOOGLE));
        assert!(
            Preset::of(Provider::Microsoft365)
                .is_some_and(|p| p.scopes.contains(&"offline_access"))
        );
        assert_eq!(Preset::of(Provider::Other), None);
    }
}
