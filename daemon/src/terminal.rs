//! Text from another host on a terminal: a status shows what home, DNS or
//! a peer said, and such text must not drive the terminal it is shown on.

/// `s` with control characters (C0, DEL, C1) and the bidirectional
/// overrides shown as `\u{..}` escapes, so text from another host cannot
/// move the cursor, recolour, retitle or reorder the terminal. Newlines too:
/// a report cannot forge lines of the status.
pub fn escape_controls(s: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(|c| c.is_control() || bidi(c)) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() || bidi(c) {
                format!("\\u{{{:x}}}", c as u32)
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
    fn controls_newlines_and_overrides_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escape_controls("listed (127.0.0.2) · ok"),
            "listed (127.0.0.2) · ok"
        );
        assert_eq!(
            escape_controls("a\x1b[2Jb\nc\u{202e}d"),
            "a\\u{1b}[2Jb\\u{a}c\\u{202e}d"
        );
    }
}
