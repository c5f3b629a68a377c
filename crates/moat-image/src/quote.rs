//! Input quoted in error messages: escaped and cut to a sane length.
//!
//! Image content (entry names, JSON strings, the tar crate's messages that
//! embed raw header bytes) reaches the user's terminal through errors. Every
//! such piece is shown with control characters, invisible formatting
//! characters and undecodable bytes escaped, and cut after
//! [`MAX_QUOTED`] bytes of escaped text with the full length noted.

use std::fmt;

/// Bytes of escaped input shown before it is cut.
pub const MAX_QUOTED: usize = 120;

/// Stand-ins for undecodable bytes (private-use plane 16), shown `\xNN`.
const STAND_IN: u32 = 0x10_0000;

/// Escapes `text` (no quotes added) and cuts it once the escaped text
/// reaches `max` bytes.
fn escape(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if out.len() >= max {
            out.push_str(&format!("...({} bytes in all)", text.len()));
            return out;
        }
        match c {
            '\u{fffd}' => out.push_str("\\u{fffd}"),
            '\'' => out.push(c),
            c if (STAND_IN..=STAND_IN + 0xff).contains(&u32::from(c)) => {
                out.push_str(&format!("\\x{:02x}", u32::from(c) - STAND_IN))
            }
            c => out.extend(c.escape_debug()),
        }
    }
    out
}

/// `"text"`, escaped and cut.
pub fn quote(text: &str) -> String {
    format!("\"{}\"", escape(text, MAX_QUOTED))
}

/// `"bytes"`, undecodable bytes as `\xNN`, escaped and cut.
pub fn quote_bytes(bytes: &[u8]) -> String {
    let mut text = String::new();
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for b in chunk.invalid() {
            text.push(char::from_u32(STAND_IN + u32::from(*b)).unwrap_or('?'));
        }
    }
    format!("\"{}\"", escape(&text, MAX_QUOTED))
}

/// `text` escaped and cut, without quotes (for lists built from input).
pub fn clean(text: &str) -> String {
    escape(text, 2 * MAX_QUOTED)
}

/// An error message from a parser that may embed input (the tar crate,
/// serde_json), escaped and cut. Keeps the message only: the original's
/// own source chain carries no further input.
#[derive(Debug)]
pub struct Cleaned(String);

impl Cleaned {
    pub fn of(e: &dyn std::error::Error) -> Cleaned {
        Cleaned(escape(&e.to_string(), 2 * MAX_QUOTED))
    }
}

impl fmt::Display for Cleaned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Cleaned {}

/// The same `io::Error` kind with its message escaped and cut.
pub fn clean_io(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error().is_some() {
        return e; // the OS's own text
    }
    std::io::Error::new(e.kind(), Cleaned::of(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_cuts() {
        assert_eq!(quote("etc/passwd"), "\"etc/passwd\"");
        assert_eq!(quote("a\u{1b}[2J\"b"), "\"a\\u{1b}[2J\\\"b\"");
        assert_eq!(quote("x\u{202e}y"), "\"x\\u{202e}y\"");
        assert_eq!(quote_bytes(b"a\xff\x1bz"), "\"a\\xff\\u{1b}z\"");
        let long = "x".repeat(500);
        assert_eq!(
            quote(&long),
            format!("\"{}...(500 bytes in all)\"", "x".repeat(MAX_QUOTED))
        );
        let e = clean_io(std::io::Error::other("field: \u{fffd}\u{fffd}\u{1b}[31m"));
        assert_eq!(e.to_string(), "field: \\u{fffd}\\u{fffd}\\u{1b}[31m");
        assert_eq!(e.kind(), std::io::ErrorKind::Other);
    }
}
