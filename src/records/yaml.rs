//! The two YAML shapes of seed `003` §6.1/§6.2, written by hand so the layout is exactly the
//! seed's (blank line between sections and entries, optional fields left out) and read back
//! with `serde-saphyr`.
//!
//! Every string is written double-quoted with YAML escapes, so no value (a description with a
//! colon, a `#`, a newline, a control character) can change the structure of the file, and
//! every character outside YAML's printable set (controls, U+FFFE, U+FFFF) is escaped, so any
//! YAML parser reads back exactly the value written (see [`quote`]).

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::{Deployment, DeploymentRecord, ImageRecord};

/// A YAML double-quoted scalar holding exactly `s`.
///
/// YAML allows only its printable set raw in a file (tab, newline, U+0020..U+007E, U+0085,
/// U+00A0..U+D7FF, U+E000..U+FFFD, U+10000..U+10FFFF): a raw U+FFFE makes the whole file
/// unreadable. So everything else is escaped, and so are the characters some parsers treat as
/// line breaks (U+0085, U+2028, U+2029), the byte-order mark and every Unicode noncharacter
/// (`\uXXXX`, or `\UXXXXXXXX` above the BMP).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            // YAML only allows printable characters in a scalar: escape the rest.
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
                || super::fields::noncharacter(c) =>
            {
                if (c as u32) > 0xFFFF {
                    let _ = write!(out, "\\U{:08X}", c as u32);
                } else {
                    let _ = write!(out, "\\u{:04X}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// RFC 3339 UTC with a `Z`, fractional seconds only when there are any.
pub fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn line(out: &mut String, indent: &str, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        let _ = writeln!(out, "{indent}{key}: {}", quote(v));
    }
}

fn image_block(out: &mut String, indent: &str, image: &ImageRecord) {
    line(out, indent, "repo", Some(&image.repo));
    line(out, indent, "tag", image.tag.as_deref());
    line(out, indent, "digest", Some(&image.digest));
    line(out, indent, "index_digest", image.index_digest.as_deref());
    let _ = writeln!(out, "{indent}platform:");
    let deeper = format!("{indent}  ");
    line(out, &deeper, "os", Some(&image.platform.os));
    line(
        out,
        &deeper,
        "architecture",
        Some(&image.platform.architecture),
    );
    line(out, &deeper, "variant", image.platform.variant.as_deref());
    line(out, indent, "description", image.description.as_deref());
    line(out, indent, "built_at", image.built_at.as_deref());
    line(out, indent, "revision", image.revision.as_deref());
    line(out, indent, "source", image.source.as_deref());
    line(out, indent, "title", image.title.as_deref());
}

/// `deploy-info.yml`: the seed's §6.1 shape (`app`, `workspace`, `image`, `deployment`).
pub fn info(d: &Deployment) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str(
        "# What runs now; imagetrail replaces this file on each deploy.\n\
         # Every deployment, oldest first, is in deploy-history.yml next to it.\n",
    );
    line(&mut out, "", "app", Some(&d.app));
    line(&mut out, "", "workspace", Some(&d.deployment.workspace));
    out.push_str("\nimage:\n");
    image_block(&mut out, "  ", &d.image);
    out.push_str("\ndeployment:\n");
    deployment_block(&mut out, "  ", &d.deployment, false);
    out
}

fn deployment_block(out: &mut String, indent: &str, dep: &DeploymentRecord, workspace: bool) {
    line(out, indent, "deployed_at", Some(&time(&dep.deployed_at)));
    line(out, indent, "deployed_by", Some(&dep.deployed_by));
    if workspace {
        line(out, indent, "workspace", Some(&dep.workspace));
    }
    line(out, indent, "name", dep.name.as_deref());
    // Last on purpose: an entry whose event_id line is complete was written whole.
    line(out, indent, "event_id", Some(&dep.event_id.to_string()));
}

/// One `deploy-history.yml` entry (seed §6.2 shape), ending with a blank line. Written with a
/// single `write` so a reader sees either nothing of it or a prefix of it.
pub fn history_entry(d: &Deployment) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str("- image:\n");
    image_block(&mut out, "    ", &d.image);
    out.push_str("\n  deployment:\n");
    deployment_block(&mut out, "    ", &d.deployment, true);
    out.push('\n');
    out
}

/// `deploy-info.yml` as read back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfoFile {
    pub app: String,
    pub workspace: String,
    pub image: ImageRecord,
    pub deployment: InfoDeployment,
}

/// The `deployment:` section of `deploy-info.yml` (the workspace sits at the top level there).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfoDeployment {
    pub deployed_at: DateTime<Utc>,
    pub deployed_by: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Optional on read so a hand-written file in the seed's shape is understood.
    #[serde(default)]
    pub event_id: Option<Uuid>,
}

impl InfoFile {
    pub fn into_deployment(self) -> Deployment {
        Deployment {
            app: self.app,
            image: self.image,
            deployment: DeploymentRecord {
                deployed_at: self.deployment.deployed_at,
                deployed_by: self.deployment.deployed_by,
                workspace: self.workspace,
                name: self.deployment.name,
                event_id: self.deployment.event_id.unwrap_or(Uuid::nil()),
            },
        }
    }
}

/// One history entry as read back. `event_id` is required: it is the last line written, so
/// its presence proves the entry is whole.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    pub image: ImageRecord,
    pub deployment: DeploymentRecord,
}

/// Parse YAML text; on failure, the 1-based line (within `text`) and a one-line message.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, (usize, String)> {
    serde_saphyr::from_str::<T>(text).map_err(|e| {
        let inner = e.without_snippet();
        let line = inner
            .location()
            .map(|l| l.line() as usize)
            .filter(|&l| l > 0)
            .unwrap_or(1);
        let msg = inner.to_string();
        // The rendered message may carry its own "at line X column Y" suffix and spans
        // several lines; keep the first line, the caller adds file and line.
        let msg = msg
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .trim()
            .to_string();
        (line, msg)
    })
}

/// Read one history entry written in exactly the shape [`history_entry`] writes, without a
/// YAML parser (a long history is read 100k entries at a time by `history` and `prune`).
/// Anything else (comments, other quoting, unknown or repeated keys, a cut line) gives `None`,
/// and the caller parses the entry with `serde-saphyr`, which then also reports the problem.
pub fn fast_history_entry(text: &str) -> Option<HistoryEntry> {
    // Fixed slots rather than maps: this runs once per entry of every range read (the
    // delivery metrics read hundreds of thousands), so it allocates only the values kept.
    const IMAGE: [&str; 9] = [
        "repo",
        "tag",
        "digest",
        "index_digest",
        "description",
        "built_at",
        "revision",
        "source",
        "title",
    ];
    const PLATFORM: [&str; 3] = ["os", "architecture", "variant"];
    const DEPLOYMENT: [&str; 5] = [
        "deployed_at",
        "deployed_by",
        "workspace",
        "name",
        "event_id",
    ];
    #[derive(PartialEq)]
    enum Section {
        Image,
        Platform,
        Deployment,
    }
    fn put<const N: usize>(
        keys: &[&str; N],
        slots: &mut [Option<String>; N],
        key: &str,
        value: &str,
    ) -> Option<()> {
        let i = keys.iter().position(|k| *k == key)?;
        if slots[i].is_some() {
            return None;
        }
        slots[i] = Some(unquote(value)?);
        Some(())
    }
    let mut lines = text.lines();
    if lines.next()? != "- image:" {
        return None;
    }
    let mut section = Section::Image;
    let mut image: [Option<String>; 9] = Default::default();
    let mut platform: [Option<String>; 3] = Default::default();
    let mut dep: [Option<String>; 5] = Default::default();
    let mut saw_platform = false;
    let mut saw_deployment = false;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line == "  deployment:" {
            if saw_deployment {
                return None;
            }
            saw_deployment = true;
            section = Section::Deployment;
            continue;
        }
        if line == "    platform:" && section != Section::Deployment {
            if saw_platform {
                return None;
            }
            saw_platform = true;
            section = Section::Platform;
            continue;
        }
        if let Some(rest) = line.strip_prefix("      ") {
            if section != Section::Platform {
                return None;
            }
            let (k, v) = rest.split_once(": ")?;
            put(&PLATFORM, &mut platform, k, v)?;
        } else if let Some(rest) = line.strip_prefix("    ") {
            let (k, v) = rest.split_once(": ")?;
            match section {
                Section::Deployment => put(&DEPLOYMENT, &mut dep, k, v)?,
                Section::Image | Section::Platform => {
                    section = Section::Image;
                    put(&IMAGE, &mut image, k, v)?
                }
            }
        } else {
            return None;
        }
    }
    let [os, architecture, variant] = platform;
    let platform = if saw_platform {
        super::Platform {
            os: os?,
            architecture: architecture?,
            variant,
        }
    } else {
        super::Platform::default()
    };
    let [
        repo,
        tag,
        digest,
        index_digest,
        description,
        built_at,
        revision,
        source,
        title,
    ] = image;
    let [deployed_at, deployed_by, workspace, name, event_id] = dep;
    Some(HistoryEntry {
        image: ImageRecord {
            repo: repo?,
            tag,
            digest: digest?,
            index_digest,
            platform,
            description,
            built_at,
            revision,
            source,
            title,
        },
        deployment: DeploymentRecord {
            deployed_at: deployed_at?.parse().ok()?,
            deployed_by: deployed_by?,
            workspace: workspace?,
            name,
            event_id: event_id?.parse().ok()?,
        },
    })
}

/// Whether `v` is a whole double-quoted scalar as [`quote`] writes it (what [`unquote`]
/// accepts), checked without building the value.
pub fn is_quoted(v: &str) -> bool {
    let Some(inner) = v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return false;
    };
    if memchr::memchr2(b'\\', b'"', inner.as_bytes()).is_none() {
        return true;
    }
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('"' | '\\' | 'n' | 't') => {}
                Some(e @ ('u' | 'U')) => {
                    let n = if e == 'u' { 4 } else { 8 };
                    let mut code = 0u32;
                    for _ in 0..n {
                        match chars.next().and_then(|h| h.to_digit(16)) {
                            Some(d) => code = code.wrapping_mul(16).wrapping_add(d),
                            None => return false,
                        }
                    }
                    if char::from_u32(code).is_none() {
                        return false;
                    }
                }
                _ => return false,
            },
            '"' => return false,
            _ => {}
        }
    }
    true
}

/// The value of a double-quoted scalar as [`quote`] writes it when it has no escape (the
/// common case: digests, times, names), borrowed; `None` for anything else.
pub fn plain_quoted(v: &str) -> Option<&str> {
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    memchr::memchr2(b'\\', b'"', inner.as_bytes())
        .is_none()
        .then_some(inner)
}

/// Whether `v` is the start of a double-quoted scalar as [`quote`] writes it, cut anywhere
/// (an escape may be cut too; a closing quote may only be the last character).
pub fn is_quoted_prefix(v: &str) -> bool {
    let Some(inner) = v.strip_prefix('"') else {
        return false;
    };
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' => return chars.peek().is_none(),
            _ => {}
        }
    }
    true
}

/// The inverse of [`quote`]; `None` for anything `quote` does not write.
fn unquote(v: &str) -> Option<String> {
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    // Most values (digests, times, names) have no escape: copy them whole.
    if !inner.bytes().any(|b| b == b'\\' || b == b'"') {
        return Some(inner.to_string());
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                't' => out.push('\t'),
                e @ ('u' | 'U') => {
                    let n = if e == 'u' { 4 } else { 8 };
                    let hex: String = chars.by_ref().take(n).collect();
                    if hex.len() != n || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return None;
                    }
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                _ => return None,
            },
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}
