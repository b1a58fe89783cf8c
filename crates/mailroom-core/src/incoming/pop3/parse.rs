//! What the POP3 client makes of the server's answers, apart from the I/O:
//! status lines, multi-line bodies, STAT, LIST/UIDL listings and CAPA. Public
//! for the fuzz targets; nothing here may panic on any input.

use crate::connection::{Failure, protocol_error};

/// The protocol's name in errors.
const POP3: &str = "POP3";

/// A POP3 answer: `+OK text` or `-ERR text`.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    Err(String),
}

/// A status line, without its line end.
pub fn reply(line: &str) -> Result<Reply, Failure> {
    if let Some(rest) = line.strip_prefix("+OK") {
        Ok(Reply::Ok(rest.trim().to_owned()))
    } else if let Some(rest) = line.strip_prefix("-ERR") {
        Ok(Reply::Err(rest.trim().to_owned()))
    } else {
        Err(protocol_error(
            POP3,
            "reply",
            format!("unexpected line {line:?}"),
        ))
    }
}

/// One line of a multi-line body (with its line end): its content with the
/// dot-stuffing undone, or None for the lone "." that ends the body.
pub fn body_line(line: &[u8]) -> Option<&[u8]> {
    if line == b".\r\n" || line == b".\n" {
        return None;
    }
    Some(line.strip_prefix(b".").unwrap_or(line))
}

/// STAT's answer: number of messages and total size.
pub fn stat(text: &str) -> Result<(u32, u64), Failure> {
    let mut words = text.split_whitespace();
    let count = words.next().and_then(|w| w.parse().ok());
    let size = words.next().and_then(|w| w.parse().ok());
    count
        .zip(size)
        .ok_or_else(|| protocol_error(POP3, "STAT", format!("unexpected answer {text:?}")))
}

/// A LIST or UIDL body: message numbers with the rest of their line.
pub fn listing(body: &[u8], command: &str) -> Result<Vec<(u32, String)>, Failure> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|l| {
            let unexpected = || protocol_error(POP3, command, format!("unexpected line {l:?}"));
            let (n, rest) = l.trim().split_once(' ').ok_or_else(unexpected)?;
            let n = n.parse().map_err(|_| unexpected())?;
            Ok((n, rest.trim().to_owned()))
        })
        .collect()
}

/// A LIST listing's sizes.
pub fn sizes(listing: Vec<(u32, String)>) -> Result<Vec<(u32, u64)>, Failure> {
    listing
        .into_iter()
        .map(|(n, size)| {
            size.parse()
                .map(|s| (n, s))
                .map_err(|_| protocol_error(POP3, "LIST", format!("bad size {size:?}")))
        })
        .collect()
}

/// A CAPA body: one capability per line.
pub fn capabilities(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_and_bad_ones_refused() {
        assert_eq!(reply("+OK 2 200").unwrap(), Reply::Ok("2 200".into()));
        assert_eq!(reply("-ERR no").unwrap(), Reply::Err("no".into()));
        assert!(reply("* OK imap").is_err());
        assert_eq!(stat("2 200").unwrap(), (2, 200));
        assert!(stat("two").is_err());
        assert_eq!(body_line(b"..x\r\n"), Some(&b".x\r\n"[..]));
        assert_eq!(body_line(b".\r\n"), None);
        let l = listing(b"1 abc\r\n2 def\r\n", "UIDL").unwrap();
        assert_eq!(l, [(1, "abc".into()), (2, "def".into())]);
        assert!(listing(b"x abc\r\n", "UIDL").is_err());
        assert!(sizes(vec![(1, "big".into())]).is_err());
        assert_eq!(
            capabilities(b"USER\r\n\r\nSASL PLAIN\r\n"),
            ["USER", "SASL PLAIN"]
        );
    }
}
