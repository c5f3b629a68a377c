//! Text that moat prints but did not write itself (image names and
//! configs, commands, package names, guest and error text), made safe
//! for a terminal: control characters (C0, DEL, C1) and bidirectional
//! overrides are shown escaped instead of being sent to the terminal,
//! where they could move the cursor, rewrite the title, hide text or
//! answer back. Every such print in the CLI goes through here.
//!
//! A workload's own output is not touched: it is passed through as a
//! terminal program's would be (docs/sandbox.md).

use std::borrow::Cow;

/// Prints a line of text that may hold untrusted parts (newlines kept).
macro_rules! outln {
    ($($t:tt)*) => {
        println!("{}", $crate::display::text(&format!($($t)*)))
    };
}

/// Prints a line to standard error, as [`outln`].
macro_rules! errln {
    ($($t:tt)*) => {
        eprintln!("{}", $crate::display::text(&format!($($t)*)))
    };
}

fn is_bidi(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

fn escape(c: char) -> String {
    match c {
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        c if (c as u32) < 0x80 => format!("\\x{:02x}", c as u32),
        c => format!("\\u{{{:x}}}", c as u32),
    }
}

fn clean(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    let bad = |c: char| (c.is_control() && !(keep_newlines && c == '\n')) || is_bidi(c);
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| if bad(c) { escape(c) } else { c.to_string() })
            .collect(),
    )
}

/// One line: every control character, newline included, escaped.
pub fn line(s: &str) -> Cow<'_, str> {
    clean(s, false)
}

/// Text of one or more lines: as [`line`], but newlines are kept.
pub fn text(s: &str) -> Cow<'_, str> {
    clean(s, true)
}

/// JSON from `serde_json`, which escapes C0 but writes DEL, C1 and
/// bidirectional overrides raw: those become `\uXXXX` escapes (the same
/// JSON value). They can only occur inside strings.
pub fn json(s: String) -> String {
    let bad = |c: char| c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c) || is_bidi(c);
    if !s.chars().any(bad) {
        return s;
    }
    s.chars()
        .map(|c| {
            if bad(c) {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert_eq!(line("plain text"), "plain text");
        assert_eq!(line("a\x1b]0;pwned\x07b"), "a\\x1b]0;pwned\\x07b");
        assert_eq!(line("x\ny\tz\r"), "x\\ny\\tz\\r");
        assert_eq!(text("x\ny\x1b[2J"), "x\ny\\x1b[2J");
        assert_eq!(line("\u{9b}31m\u{7f}"), "\\u{9b}31m\\x7f");
        assert_eq!(line("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(line("naïve ✓"), "naïve ✓");
        let j = serde_json::to_string(&["\x1b[1m\u{9b}\u{7f}"]).unwrap();
        assert_eq!(json(j.clone()), r#"["\u001b[1m\u009b\u007f"]"#);
        let back: Vec<String> = serde_json::from_str(&json(j)).unwrap();
        assert_eq!(back, ["\x1b[1m\u{9b}\u{7f}"]);
    }
}
