//! Sizes written as Kubernetes quantities (`25Mi`, `10M`, `1048576`).

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error(
        "{0:?} is not a size: write a whole number with an optional suffix Ki, Mi, Gi (powers of 1024) or k, M, G (powers of 1000), e.g. 25Mi"
    )]
    Invalid(String),
}

/// Parses a quantity into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let invalid = || SizeError::Invalid(text.to_owned());
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(invalid()),
    };
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    number.checked_mul(multiplier).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_size("25Mi"), Ok(25 * 1024 * 1024));
        assert_eq!(parse_size("10M"), Ok(10_000_000));
        assert_eq!(parse_size("512Ki"), Ok(512 * 1024));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("2k"), Ok(2000));
        assert_eq!(parse_size("4096"), Ok(4096));
    }

    #[test]
    fn garbage_is_refused_with_the_value_named() {
        for bad in ["", "Mi", "25MB", "-1", "1.5Mi", "99999999999999999999Gi"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
