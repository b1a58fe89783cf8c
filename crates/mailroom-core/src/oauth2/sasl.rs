//! The two SASL mechanisms that carry a bearer token: OAUTHBEARER (RFC 7628)
//! and Google's and Microsoft's XOAUTH2, which predates it.

use secrecy::{ExposeSecret, SecretString};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mechanism {
    OAuthBearer,
    XOAuth2,
}

impl Mechanism {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::OAuthBearer => "OAUTHBEARER",
            Self::XOAuth2 => "XOAUTH2",
        }
    }

    /// The mechanism to use with a server that lists `offered`: the standard
    /// OAUTHBEARER where offered, else XOAUTH2. A server that lists no
    /// mechanisms at all (some POP3 servers keep quiet) gets XOAUTH2, which
    /// every large provider takes; one that lists others but neither of these
    /// cannot take a token.
    pub(crate) fn choose<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let offered: Vec<&str> = offered.into_iter().collect();
        let has = |m: Self| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name()));
        if offered.is_empty() {
            Some(Self::XOAuth2)
        } else if has(Self::OAuthBearer) {
            Some(Self::OAuthBearer)
        } else if has(Self::XOAuth2) {
            Some(Self::XOAuth2)
        } else {
            None
        }
    }

    /// The client's first message, before base64. It holds the token.
    pub(crate) fn initial_response(
        self,
        user: &str,
        token: &SecretString,
        host: &str,
        port: u16,
    ) -> SecretString {
        let token = token.expose_secret();
        SecretString::from(match self {
            Self::OAuthBearer => {
                // RFC 7628 §3.1: "," and "=" in the authzid are escaped.
                let user = user.replace('=', "=3D").replace(',', "=2C");
                format!("n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01")
            }
            Self::XOAuth2 => format!("user={user}\x01auth=Bearer {token}\x01\x01"),
        })
    }

    /// The answer to a server's error challenge (a JSON status in a `+`
    /// continuation), after which the server sends its final refusal.
    pub(crate) fn error_ack(self) -> &'static str {
        match self {
            Self::OAuthBearer => "\x01",
            Self::XOAuth2 => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauthbearer_is_preferred_and_silence_means_xoauth2() {
        assert_eq!(
            Mechanism::choose(["PLAIN", "XOAUTH2", "OAUTHBEARER"]),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(
            Mechanism::choose(["plain", "xoauth2"]),
            Some(Mechanism::XOAuth2)
        );
        assert_eq!(Mechanism::choose([]), Some(Mechanism::XOAuth2));
        assert_eq!(Mechanism::choose(["PLAIN", "LOGIN"]), None);
    }

    #[test]
    fn initial_responses_follow_the_specifications() {
        let t = SecretString::from("tok".to_owned());
        assert_eq!(
            Mechanism::XOAuth2
                .initial_response("a@b.c", &t, "h", 993)
                .expose_secret(),
            "user=a@b.c\x01auth=Bearer tok\x01\x01"
        );
        assert_eq!(
            Mechanism::OAuthBearer
                .initial_response("a,b=c", &t, "imap.example", 993)
                .expose_secret(),
            "n,a=a=2Cb=3Dc,\x01host=imap.example\x01port=993\x01auth=Bearer tok\x01\x01"
        );
    }
}
