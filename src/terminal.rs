//! Untrusted text (label values, server answers) made safe before it reaches a terminal.

/// The most bytes of one untrusted value kept (labels come from arbitrary images).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Replace control characters (ESC, CR, BEL, C1 controls...) with visible escapes so that a
/// hostile label cannot move the cursor, recolour or rewrite what the operator sees.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A table cell for an optional untrusted value: sanitised, or `-` when absent.
pub fn sanitize_or_dash(value: Option<&str>) -> String {
    value.map(sanitize).unwrap_or_else(|| "-".into())
}

/// Cut a value to at most `max` bytes on a character boundary; says whether it was cut.
pub fn cap(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_sequences() {
        assert_eq!(sanitize("a\u{1b}[31mred\u{7}"), "a\\u{1b}[31mred\\u{7}");
    }

    #[test]
    fn caps_on_char_boundary() {
        assert_eq!(cap("héllo", 2), ("h", true));
        assert_eq!(cap("abc", 5), ("abc", false));
    }
}
