//! Environment and app names as single path segments.
//!
//! An environment may be `cluster/namespace` and an app may be a repository path
//! (`team/hello`), but each must become exactly one directory under the state directory, must
//! never escape it and must never collide with another name. The encoding is a small
//! percent-encoding: `%`, `/`, `\`, control characters and a leading `.` become `%XX`, every
//! other character stays as it is, so `prod` is still `prod` on disk and a person who logs in
//! recognises the directories. Because `%` itself is encoded, decoding is exact.

use super::RecordsError;

/// The longest encoded segment kept: most file systems allow 255 bytes per name.
const MAX_SEGMENT: usize = 255;

/// Check `name` and encode it as one path segment.
///
/// Refused: an empty name, an empty, `.` or `..` segment between slashes (so `a/../b` cannot be
/// mistaken for a path even by a tool that decodes the directory name), a NUL character, and a
/// name whose encoding does not fit in one file name.
pub fn encode(what: &'static str, name: &str) -> Result<String, RecordsError> {
    let refuse = |reason: &'static str| RecordsError::InvalidName {
        what,
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(refuse("it is empty; give a name"));
    }
    if name.contains('\0') {
        return Err(refuse("it contains a NUL character"));
    }
    for segment in name.split('/') {
        match segment {
            "" => {
                return Err(refuse(
                    "it has an empty segment (a leading, trailing or double `/`)",
                ));
            }
            "." | ".." => {
                return Err(refuse(
                    "it has a `.` or `..` segment, which could point outside the state directory",
                ));
            }
            _ => {}
        }
    }
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.char_indices() {
        let escape = matches!(c, '%' | '/' | '\\') || c.is_control() || (i == 0 && c == '.');
        if escape {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    if out.len() > MAX_SEGMENT {
        return Err(refuse(
            "it is too long to store (more than 255 bytes once encoded)",
        ));
    }
    Ok(out)
}

/// Decode a directory name written by [`encode`]; `None` for a name `encode` cannot have
/// written (a stray directory someone created by hand), which listings skip.
pub fn decode(segment: &str) -> Option<String> {
    if segment.is_empty() || segment.starts_with('.') {
        return None;
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    // Only accept the canonical form, so two directory names can never decode to one name.
    (encode("name", &name).ok()? == segment).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_paths_and_odd_characters() {
        for name in [
            "prod",
            "cluster/namespace",
            "team/hello",
            "registry.example.com:5000/team/app",
            ".hidden",
            "100%",
            "a\\b",
            "tab\there",
            "ünïcode",
        ] {
            let seg = encode("app", name).unwrap();
            assert!(!seg.contains('/'), "{seg}");
            assert!(!seg.starts_with('.'), "{seg}");
            assert_eq!(decode(&seg).as_deref(), Some(name), "{seg}");
        }
        assert_eq!(encode("env", "prod").unwrap(), "prod");
        assert_eq!(
            encode("env", "cluster/namespace").unwrap(),
            "cluster%2Fnamespace"
        );
        assert_eq!(encode("app", ".x").unwrap(), "%2Ex");
    }

    #[test]
    fn refuses_escaping_and_empty_names() {
        for name in [
            "", "..", "a/..", "../etc", "a//b", "/abs", "x/", ".", "a/./b", "nul\0",
        ] {
            let err = encode("env", name).unwrap_err();
            assert!(
                matches!(err, RecordsError::InvalidName { what: "env", .. }),
                "{name:?}: {err}"
            );
        }
    }

    #[test]
    fn decode_rejects_non_canonical_names() {
        assert_eq!(
            decode("%2fx"),
            None,
            "lower-case hex is not what encode writes"
        );
        assert_eq!(decode(".lock"), None);
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%41"), None, "A is never encoded");
    }
}
