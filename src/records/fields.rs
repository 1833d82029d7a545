//! What the store accepts in each field of a deployment, checked before anything is written.
//!
//! Every writer (the CLI's `deploy`, `POST /api/v1/deployments`, the admission webhook, `db
//! import`) goes through [`Store::record_checked_many_with`](super::Store::record_checked_many_with)
//! or, on PostgreSQL, the group-commit writer of [`super::postgres`]; both call [`check`] first,
//! so one rule holds whoever sends the value and whichever store keeps it. A value that breaks a rule
//! is refused whole with [`RecordsError::InvalidField`] naming the field (the server answers
//! 400, the CLI exits 2); nothing is cut, replaced or dropped silently.
//!
//! The rules (the README's "Field limits" table says the same):
//!
//! * **Platform** `os`, `architecture`, `variant`: a lowercase token, `[a-z0-9][a-z0-9._-]*`, at
//!   most [`MAX_TOKEN`] bytes (`linux`, `amd64`, `arm64`, `v8`).
//! * **One-line text** (`deployed_by`, `name`, `environment`, `app`): non-empty, at most
//!   [`MAX_NAME`] bytes, and none of the characters [`refused_char`] names: control characters
//!   (a newline included), Unicode noncharacters (U+FFFE, U+FDD0...), line and paragraph
//!   separators, the byte-order mark and the bidirectional controls (U+202E...), which would let
//!   a stored value reorder or hide what a terminal shows.
//! * **Image labels** (`description`, `title`, `source`, `revision`, `built_at`): at most
//!   [`MAX_LABEL`] bytes (what `deploy` keeps of a label), any characters: they are the image
//!   author's, stored escaped and read back exactly.
//! * **Reference fields** (`repo`, `tag`, `digest`, `index_digest`): checked by the image
//!   reference grammar where the reference is parsed (see [`check_reference`]).
//!
//! What is accepted is stored exactly: [`super::yaml::quote`] escapes every character outside
//! YAML's printable set, so any reader reads back the value that was sent.

use super::{Deployment, RecordsError};
use crate::reference::{Digest, ImageRef, ReferenceError, valid_tag};
// The character classes are the terminal's, so the rules refuse by the same definitions the
// tables escape by; re-exported for the YAML writer and older callers.
use crate::terminal::separator_or_bom;
pub use crate::terminal::{bidi_control, noncharacter};

/// The longest platform token kept, in bytes.
pub const MAX_TOKEN: usize = 32;
/// The longest one-line text field kept (`deployed_by`, `name`, environment, app), in bytes.
pub const MAX_NAME: usize = 253;
/// The longest image label kept, in bytes: what `deploy` keeps of a label.
pub const MAX_LABEL: usize = crate::terminal::MAX_VALUE_BYTES;

/// Check every field of `d` against the rules in the module documentation; the first field
/// that breaks one is named in the error.
pub fn check(d: &Deployment) -> Result<(), RecordsError> {
    one_line("environment", &d.deployment.workspace)?;
    one_line("app", &d.app)?;
    one_line("deployed_by", &d.deployment.deployed_by)?;
    if let Some(name) = &d.deployment.name {
        one_line("name", name)?;
    }
    let p = &d.image.platform;
    token("platform.os", &p.os)?;
    token("platform.architecture", &p.architecture)?;
    if let Some(v) = &p.variant {
        token("platform.variant", v)?;
    }
    let i = &d.image;
    for (field, value) in [
        ("description", &i.description),
        ("title", &i.title),
        ("source", &i.source),
        ("revision", &i.revision),
        ("built_at", &i.built_at),
    ] {
        if let Some(v) = value {
            label(field, v)?;
        }
    }
    check_reference(d)
}

/// The repository, tag and digests of `d`, by the one image reference grammar
/// ([`crate::reference`]), so a record can only hold what every reader parses back.
fn check_reference(d: &Deployment) -> Result<(), RecordsError> {
    let i = &d.image;
    match ImageRef::parse(&i.repo) {
        // Stored in the normalised form only: readers normalise what they read (older
        // records), so a short form written now would not read back as written.
        Ok(r) if r.tag.is_none() && r.digest.is_none() && r.repo() == i.repo => {}
        Ok(r) if r.tag.is_none() && r.digest.is_none() => {
            return Err(refuse(
                "repo",
                format!(
                    "{:?} is not in the normalised form records keep; give {:?}",
                    i.repo,
                    r.repo()
                ),
            ));
        }
        Ok(_) => {
            return Err(refuse(
                "repo",
                "it carries a tag or digest; give the repository alone (host/path)".to_string(),
            ));
        }
        Err(e) => return Err(refuse("repo", e.to_string())),
    }
    if let Some(t) = &i.tag
        && !valid_tag(t)
    {
        return Err(refuse("tag", ReferenceError::BadTag(t.clone()).to_string()));
    }
    for (field, digest) in [
        ("digest", Some(&i.digest)),
        ("index_digest", i.index_digest.as_ref()),
    ] {
        if let Some(v) = digest
            && !Digest::is_valid(v)
        {
            return Err(refuse(
                field,
                ReferenceError::BadDigest(v.clone()).to_string(),
            ));
        }
    }
    Ok(())
}

fn refuse(field: &'static str, reason: String) -> RecordsError {
    RecordsError::InvalidField { field, reason }
}

/// A platform token: `[a-z0-9][a-z0-9._-]*`, at most [`MAX_TOKEN`] bytes.
fn token(field: &'static str, v: &str) -> Result<(), RecordsError> {
    const RULE: &str = "a platform is a short lowercase token such as linux, amd64, arm64 or v8 \
                        ([a-z0-9][a-z0-9._-]*, at most 32 bytes)";
    if v.is_empty() {
        return Err(refuse(field, format!("it is empty; {RULE}")));
    }
    if v.len() > MAX_TOKEN {
        return Err(refuse(
            field,
            format!("it is {} bytes long; {RULE}", v.len()),
        ));
    }
    for (i, c) in v.chars().enumerate() {
        let ok =
            c.is_ascii_lowercase() || c.is_ascii_digit() || (i > 0 && matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(refuse(
                field,
                format!("character {} is {}; {RULE}", i + 1, describe(c)),
            ));
        }
    }
    Ok(())
}

/// One line of text: non-empty, at most [`MAX_NAME`] bytes, no [`refused_char`].
fn one_line(field: &'static str, v: &str) -> Result<(), RecordsError> {
    const RULE: &str = "one line of printable text, at most 253 bytes, without control, \
                        bidirectional-control or noncharacter code points";
    if v.is_empty() {
        return Err(refuse(field, format!("it is empty; {RULE}")));
    }
    if v.len() > MAX_NAME {
        return Err(refuse(
            field,
            format!("it is {} bytes long; {RULE}", v.len()),
        ));
    }
    chars(field, v, RULE)
}

/// An image label: at most [`MAX_LABEL`] bytes, any characters.
///
/// Labels are the image author's, not the deployer's: refusing a deployment over a control
/// character in a description would only make the image undeployable. They are stored escaped
/// and read back exactly, and every table escapes them when it prints them.
fn label(field: &'static str, v: &str) -> Result<(), RecordsError> {
    if v.len() > MAX_LABEL {
        return Err(refuse(
            field,
            format!(
                "it is {} bytes long; an image label is kept up to 64 KiB",
                v.len()
            ),
        ));
    }
    Ok(())
}

fn chars(field: &'static str, v: &str, rule: &str) -> Result<(), RecordsError> {
    for (i, c) in v.chars().enumerate() {
        if refused_char(c) {
            return Err(refuse(
                field,
                format!("character {} is {}; {rule}", i + 1, describe(c)),
            ));
        }
    }
    Ok(())
}

/// Whether `c` is refused in text fields: a control character, a Unicode noncharacter, a line
/// or paragraph separator, the byte-order mark, or a bidirectional control.
pub fn refused_char(c: char) -> bool {
    c.is_control() || noncharacter(c) || separator_or_bom(c) || bidi_control(c)
}

/// `c` for a message: the code point, and what kind of character it is.
fn describe(c: char) -> String {
    let kind = if c.is_control() {
        "a control character"
    } else if noncharacter(c) {
        "a Unicode noncharacter"
    } else if bidi_control(c) {
        "a bidirectional control"
    } else if separator_or_bom(c) {
        "a line separator or byte-order mark"
    } else if c.is_ascii_uppercase() {
        "an uppercase letter"
    } else {
        "not allowed here"
    };
    format!("U+{:04X} ({kind})", c as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noncharacters_and_bidi_controls_are_recognised() {
        for c in [
            '\u{FFFE}',
            '\u{FFFF}',
            '\u{FDD0}',
            '\u{1FFFE}',
            '\u{10FFFF}',
        ] {
            assert!(noncharacter(c), "{c:?}");
        }
        for c in ['a', '\u{FFFD}', '\u{FDCF}', '\u{1F600}'] {
            assert!(!noncharacter(c), "{c:?}");
        }
        assert!(bidi_control('\u{202E}') && bidi_control('\u{2067}'));
        assert!(!refused_char('\u{200D}'), "ZWJ joins emoji");
    }

    #[test]
    fn tokens_are_short_lowercase() {
        assert!(token("platform.os", "linux").is_ok());
        assert!(token("platform.variant", "v8").is_ok());
        for bad in ["", "Linux", "-x", "a b", "x\u{FFFE}", &"a".repeat(33)] {
            let e = token("platform.os", bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid platform.os: "), "{e}");
        }
    }
}
