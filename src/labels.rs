//! The label model: the required labels (`git-url`, `git-sha`, `email-ids`), the OCI labels,
//! validation for `verify`, and capping of untrusted values.
//!
//! Labels come from arbitrary images, so every value is capped at
//! [`crate::terminal::MAX_VALUE_BYTES`] when read; the cap is recorded as a problem so nothing
//! is cut silently.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::terminal::{MAX_VALUE_BYTES, cap};

/// The labels every target must carry, in the order they are reported.
pub const REQUIRED: [&str; 3] = ["git-url", "git-sha", "email-ids"];

/// The prefix of the OCI image annotations collected alongside the required labels.
pub const OCI_PREFIX: &str = "org.opencontainers.image.";

/// The keys the OCI image spec pre-defines under [`OCI_PREFIX`].
const OCI_KEYS: [&str; 14] = [
    "created",
    "authors",
    "url",
    "documentation",
    "source",
    "version",
    "revision",
    "vendor",
    "licenses",
    "ref.name",
    "title",
    "description",
    "base.digest",
    "base.name",
];

/// One problem with a target's labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The label key.
    pub label: String,
    /// What is wrong and what to do, one sentence.
    pub message: String,
}

/// The labels of one target, trimmed and capped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    /// `git-url`, when present and not empty.
    pub git_url: Option<String>,
    /// `git-sha`, when present and not empty.
    pub git_sha: Option<String>,
    /// `email-ids`, when present and not empty.
    pub email_ids: Option<String>,
    /// Every `org.opencontainers.image.*` label, trimmed (empty ones kept, so verify sees them).
    pub oci: BTreeMap<String, String>,
    /// Labels whose value was longer than the cap: key and original length in bytes.
    pub capped: Vec<(String, usize)>,
}

impl Labels {
    /// Read the labels we care about from an object's label map (exact keys, values trimmed,
    /// an empty value counts as missing).
    pub fn from_map(map: &HashMap<String, String>) -> Labels {
        let mut labels = Labels::default();
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for key in keys {
            let wanted = REQUIRED.contains(&key.as_str()) || key.starts_with(OCI_PREFIX);
            if !wanted {
                continue;
            }
            let raw = &map[key];
            let (kept, was_cut) = cap(raw, MAX_VALUE_BYTES);
            if was_cut {
                labels.capped.push((key.clone(), raw.len()));
            }
            let value = kept.trim().to_string();
            match key.as_str() {
                "git-url" => labels.git_url = Some(value).filter(|v| !v.is_empty()),
                "git-sha" => labels.git_sha = Some(value).filter(|v| !v.is_empty()),
                "email-ids" => labels.email_ids = Some(value).filter(|v| !v.is_empty()),
                _ => {
                    labels.oci.insert(key.clone(), value);
                }
            }
        }
        labels
    }

    /// A required label's value.
    pub fn required(&self, key: &str) -> Option<&str> {
        match key {
            "git-url" => self.git_url.as_deref(),
            "git-sha" => self.git_sha.as_deref(),
            "email-ids" => self.email_ids.as_deref(),
            _ => None,
        }
    }

    /// The required labels that are missing or empty, in [`REQUIRED`] order.
    pub fn missing(&self) -> Vec<&'static str> {
        REQUIRED
            .iter()
            .copied()
            .filter(|k| self.required(k).is_none())
            .collect()
    }

    /// Required labels whose value was cut at the cap (such a value cannot be right).
    pub fn capped_required(&self) -> Vec<&str> {
        self.capped
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| REQUIRED.contains(k))
            .collect()
    }

    /// Every problem with these labels, found in one pass, without network.
    pub fn verify(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut add = |label: &str, message: String| {
            problems.push(Problem {
                label: label.to_string(),
                message,
            })
        };
        for (key, len) in &self.capped {
            add(
                key,
                format!(
                    "label {key} is {len} bytes long; only the first {MAX_VALUE_BYTES} bytes were kept. Labels should be short: move large data out of labels"
                ),
            );
        }
        for key in self.missing() {
            add(
                key,
                format!("label {key} is missing or empty; add `LABEL {key}=...` to the Dockerfile"),
            );
        }
        if let Some(url) = &self.git_url
            && url.chars().any(crate::terminal::hidden)
        {
            // A URL parser drops tabs and newlines and percent-encodes U+202E, so such a
            // value would pass as a URL while showing something else on a terminal.
            add(
                "git-url",
                format!(
                    "label git-url {url:?} holds control or invisible characters (such as U+202E, which reverses the text shown); use the repository's plain clone URL"
                ),
            );
        } else if let Some(url) = &self.git_url
            && !is_git_url(url)
        {
            add(
                "git-url",
                format!(
                    "label git-url {url:?} is not a URL; use the repository's clone URL, e.g. https://github.com/org/repo"
                ),
            );
        }
        if let Some(sha) = &self.git_sha
            && !is_git_sha(sha)
        {
            add(
                "git-sha",
                format!(
                    "label git-sha {sha:?} is not a git commit hash (7 to 40 hex digits); use `git rev-parse HEAD`"
                ),
            );
        }
        if let Some(emails) = &self.email_ids {
            for address in emails.split(',').map(str::trim) {
                if !is_email(address) {
                    add(
                        "email-ids",
                        format!(
                            "label email-ids has {address:?}, which is not an e-mail address; give comma-separated addresses such as dev@example.com"
                        ),
                    );
                }
            }
        }
        for (key, value) in &self.oci {
            let name = &key[OCI_PREFIX.len()..];
            if !OCI_KEYS.contains(&name) {
                add(
                    key,
                    format!(
                        "label {key} is not one of the OCI image spec's pre-defined annotation keys; check its spelling"
                    ),
                );
                continue;
            }
            if value.is_empty() {
                add(
                    key,
                    format!("label {key} is empty; remove it or give a value"),
                );
                continue;
            }
            let bad = match name {
                "created" if chrono::DateTime::parse_from_rfc3339(value).is_err() => Some(format!(
                    "label {key} {value:?} is not an RFC 3339 date-time; use e.g. `date -u +%Y-%m-%dT%H:%M:%SZ`"
                )),
                "url" | "documentation" | "source" if !is_url(value) => {
                    Some(format!("label {key} {value:?} is not a URL"))
                }
                "base.digest" if !is_digest(value) => Some(format!(
                    "label {key} {value:?} is not a digest such as sha256:<64 hex digits>"
                )),
                _ => None,
            };
            if let Some(message) = bad {
                add(key, message);
            }
        }
        problems
    }

    /// The labels as a JSON object: the required ones present, then the OCI ones.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        for key in REQUIRED {
            if let Some(v) = self.required(key) {
                map.insert(key.into(), v.into());
            }
        }
        for (k, v) in &self.oci {
            map.insert(k.clone(), v.clone().into());
        }
        map
    }
}

/// An absolute URL with a scheme and a host.
fn is_url(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|u| u.has_host() && !text.contains(char::is_whitespace))
}

/// A git remote: a URL (`https://`, `ssh://`, `git://`...) or the scp-like `user@host:path`.
fn is_git_url(text: &str) -> bool {
    if is_url(text) {
        return true;
    }
    // scp-like syntax: user@host:path, no scheme, no whitespace.
    match text.split_once('@') {
        Some((user, rest)) => {
            !user.is_empty()
                && !text.contains(char::is_whitespace)
                && rest
                    .split_once(':')
                    .is_some_and(|(host, path)| !host.is_empty() && !path.is_empty())
        }
        None => false,
    }
}

/// 7 to 40 hex digits.
fn is_git_sha(text: &str) -> bool {
    (7..=40).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A plain `local@domain.tld` address (no display names, no whitespace).
fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.rsplit_once('@') else {
        return false;
    };
    let ok_chars = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && !"<>()[],;:\"@".contains(c))
    };
    ok_chars(local)
        && ok_chars(domain)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
}

/// `algorithm:hex`, e.g. `sha256:` and 64 hex digits.
fn is_digest(text: &str) -> bool {
    // The one digest check, the same answer as `deploy` and the server give.
    crate::reference::Digest::is_valid(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_map(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn trims_and_treats_empty_as_missing() {
        let l = labels(&[
            ("git-url", "  https://x/y "),
            ("git-sha", "  "),
            ("other", "z"),
        ]);
        assert_eq!(l.git_url.as_deref(), Some("https://x/y"));
        assert_eq!(l.missing(), vec!["git-sha", "email-ids"]);
    }

    #[test]
    fn finds_every_problem_in_one_pass() {
        let l = labels(&[
            ("git-url", "not a url"),
            ("git-sha", "xyz"),
            ("email-ids", "a@example.com, nope"),
            ("org.opencontainers.image.created", "yesterday"),
            ("org.opencontainers.image.colour", "red"),
        ]);
        let problems = l.verify();
        let found: Vec<&str> = problems.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(
            found,
            vec![
                "git-url",
                "git-sha",
                "email-ids",
                "org.opencontainers.image.colour",
                "org.opencontainers.image.created"
            ]
        );
    }

    #[test]
    fn flags_hidden_characters_in_git_url() {
        for url in [
            "https://github.com/example/app\u{202E}ppa",
            "https://github.com/exa\tmple/app",
            "https://github.com/example/app\u{1b}[2J",
            // Format characters and noncharacters beyond the bidi controls: a soft hyphen,
            // a line separator, a tag character, a noncharacter of the Arabic block.
            "https://github.com/exam\u{ad}ple/app",
            "https://github.com/example\u{2028}/app",
            "https://github.com/example/app\u{e0041}",
            "https://github.com/example/app\u{fdd0}",
        ] {
            let l = labels(&[
                ("git-url", url),
                ("git-sha", "46e443d"),
                ("email-ids", "a@example.com"),
            ]);
            let problems = l.verify();
            assert_eq!(problems.len(), 1, "{url:?}: {problems:?}");
            assert!(
                problems[0]
                    .message
                    .contains("control or invisible characters"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn accepts_good_labels() {
        let l = labels(&[
            ("git-url", "git@github.com:org/repo.git"),
            ("git-sha", "46e443d"),
            ("email-ids", "a@example.com,b@example.org"),
            ("org.opencontainers.image.created", "2026-01-24T22:41:03Z"),
            (
                "org.opencontainers.image.source",
                "https://github.com/org/repo",
            ),
        ]);
        assert_eq!(l.verify(), vec![]);
    }
}
