//! Passwords as they come out of a Secret, cleaned up the way users paste them.

use secrecy::SecretString;

use crate::vocab::Provider;

/// Turns a Secret's value into the password to send. Google shows an App Password
/// as "abcd efgh ijkl mnop" and users paste it with the spaces (sometimes
/// non-breaking ones), so for Gmail every whitespace character is removed. For any
/// provider a trailing line break is dropped: `echo pw > file` and editors add one,
/// and no real password ends in one.
pub fn normalize_password(raw: &str, provider: Provider) -> SecretString {
    let cleaned: String = match provider {
        Provider::Gmail => raw.chars().filter(|c| !c.is_whitespace()).collect(),
        Provider::Microsoft365 | Provider::Other => raw.trim_end_matches(['\r', '\n']).to_owned(),
    };
    SecretString::from(cleaned)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn gmail_app_password_spaces_are_removed() {
        let p = normalize_password("abcd efgh ijkl mnop", Provider::Gmail);
        assert_eq!(p.expose_secret(), "abcdefghijklmnop");
        assert_eq!(p.expose_secret().len(), 16);
        let p = normalize_password("abcd\u{a0}efgh ijkl\tmnop\n", Provider::Gmail);
        assert_eq!(p.expose_secret(), "abcdefghijklmnop");
    }

    #[test]
    fn other_providers_keep_inner_spaces_but_drop_a_trailing_newline() {
        let p = normalize_password("pass word\r\n", Provider::Other);
        assert_eq!(p.expose_secret(), "pass word");
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let p = normalize_password("abcd efgh ijkl mnop", Provider::Gmail);
        let shown = format!("{p:?}");
        assert!(!shown.contains("abcd"), "{shown}");
    }
}
