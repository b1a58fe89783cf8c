//! Text and domain normalisation shared by the filter and its inputs: case
//! folding (so "Straße" equals "STRASSE"), NFKC, and whitespace collapsed to one
//! space (so a phrase matches across a line break).

use unicode_normalization::UnicodeNormalization;

/// Case-folded, NFKC-normalised text with every run of whitespace as one space.
pub(crate) fn text(s: &str) -> String {
    // ASCII needs neither NFKC nor full case folding: the common case stays cheap.
    let folded: String = if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        caseless::default_case_fold_str(&s.nfkc().collect::<String>())
            .nfkc()
            .collect()
    };
    let mut out = String::with_capacity(folded.len());
    let mut space = false;
    for c in folded.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out
}

/// A domain in its ASCII (punycode) form, lower case, without a trailing dot.
/// Unicode domains (`bücher.example`) and their punycode (`xn--bcher-kva.example`)
/// compare equal.
pub(crate) fn domain(s: &str) -> String {
    let trimmed = s.trim().trim_end_matches('.');
    idna::domain_to_ascii(trimmed).unwrap_or_else(|_| trimmed.to_ascii_lowercase())
}

/// An address compared case-insensitively, its domain IDN-normalised.
pub(crate) fn address(s: &str) -> String {
    match s.trim().rsplit_once('@') {
        Some((local, host)) => format!("{}@{}", text(local), domain(host)),
        None => text(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_folding_and_whitespace() {
        assert_eq!(text("Straße"), text("STRASSE"));
        assert_eq!(text("  Printer\r\n  on\tFIRE "), "printer on fire");
        assert_eq!(text("ﬁle"), "file");
    }

    #[test]
    fn idn_domains_compare_equal() {
        assert_eq!(domain("Bücher.Example"), domain("xn--bcher-kva.example"));
        assert_eq!(domain("EXAMPLE.com."), "example.com");
        assert_eq!(
            address("HR@Bücher.example"),
            address("hr@xn--bcher-kva.example")
        );
    }
}
