//! Untrusted text (label values, server answers) made safe before it reaches a terminal, and
//! the one definition of the character classes that make text unsafe: [`hidden`] (what
//! [`crate::output`] shows escaped) is made of [`char::is_control`], [`format_char`] and
//! [`noncharacter`]; the record field rules (`records/fields.rs`) refuse the control
//! characters, the noncharacters, [`bidi_control`] and [`separator_or_bom`]: a part of
//! [`hidden`], so nothing they refuse would print as itself, and a hidden character they accept
//! (a zero-width joiner in an emoji) is stored and shown escaped.

/// The most bytes of one untrusted value kept (labels come from arbitrary images).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Replace control characters (ESC, CR, BEL, C1 controls...), format characters (bidi
/// overrides, zero-width characters) and noncharacters with visible escapes, so that a hostile
/// label cannot move the cursor, recolour, reorder or hide what the operator sees.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if hidden(c) && c != '\n' && c != '\t' {
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

/// Whether `c` must not reach a terminal as itself: a control character, a format character
/// ([`format_char`]) or a noncharacter.
pub fn hidden(c: char) -> bool {
    c.is_control() || format_char(c) || noncharacter(c)
}

/// Unicode general category Cf (format), plus the line and paragraph separators (Zl, Zp): the
/// bidirectional controls, the zero-width characters, the byte-order mark, invisible operators
/// and tags.
pub fn format_char(c: char) -> bool {
    matches!(c as u32,
        0x00AD
        | 0x0600..=0x0605
        | 0x061C
        | 0x06DD
        | 0x070F
        | 0x0890..=0x0891
        | 0x08E2
        | 0x180E
        | 0x200B..=0x200F
        | 0x2028..=0x202E
        | 0x2060..=0x2064
        | 0x2066..=0x206F
        | 0xFEFF
        | 0xFFF9..=0xFFFB
        | 0x110BD
        | 0x110CD
        | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A
        | 0xE0001
        | 0xE0020..=0xE007F)
}

/// U+FDD0..U+FDEF and the last two code points of every plane (U+FFFE, U+FFFF, U+1FFFE...).
pub fn noncharacter(c: char) -> bool {
    let u = c as u32;
    (0xFDD0..=0xFDEF).contains(&u) || (u & 0xFFFE) == 0xFFFE
}

/// The bidirectional formatting characters (Unicode's `Bidi_Control` property), which reorder
/// what a terminal shows.
pub fn bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// The line and paragraph separators (U+2028, U+2029) and the byte-order mark (U+FEFF).
pub fn separator_or_bom(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_sequences() {
        assert_eq!(sanitize("a\u{1b}[31mred\u{7}"), "a\\u{1b}[31mred\\u{7}");
        // A right-to-left override would show "evil.exe" as "exe.live" and a zero-width space
        // would hide a difference: both are shown as escapes; lines and tabs stay.
        assert_eq!(
            sanitize("a\u{202E}b\u{200B}c\u{FFFE}\n\td é"),
            "a\\u{202e}b\\u{200b}c\\u{fffe}\n\td é"
        );
    }

    /// The narrower classes the field rules refuse lie inside [`format_char`]: the rules never
    /// refuse a character the tables would print as itself.
    #[test]
    fn the_narrow_classes_are_format_characters() {
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            if bidi_control(c) || separator_or_bom(c) {
                assert!(format_char(c), "U+{:04X}", c as u32);
            }
        }
        assert!(hidden('\u{200D}') && !bidi_control('\u{200D}'));
        assert!(!hidden('é') && !hidden(' ') && hidden('\u{FFFE}'));
    }

    #[test]
    fn caps_on_char_boundary() {
        assert_eq!(cap("héllo", 2), ("h", true));
        assert_eq!(cap("abc", 5), ("abc", false));
    }
}
