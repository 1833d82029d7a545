//! Image references pinned by digest: `host/repository[:tag]@sha256:<64 hex>`. Tags move, so
//! the deployments API and the admission webhook in enforce mode take nothing else.

use thiserror::Error;

use crate::records::{ImageRecord, Platform};

/// Why a reference is not usable as a pinned image.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// No reference at all.
    #[error("the image reference is empty; send host/repository@sha256:<digest>")]
    Empty,
    /// A tag (or nothing) where a digest is required.
    #[error(
        "image {0:?} is not pinned by digest: tags move, so a deployment is recorded by digest only; send {1}@sha256:<digest> (the digest `docker buildx imagetools inspect` or `imagetrail deploy` shows)"
    )]
    NotPinned(String, String),
    /// Something after `@` that is not a digest.
    #[error(
        "image {0:?} has a malformed digest: expected sha256: and 64 lower-case hex digits (or sha512: and 128)"
    )]
    BadDigest(String),
    /// The repository part is not a repository name.
    #[error("image {0:?} has no valid repository name before the digest")]
    BadRepository(String),
}

/// An image reference pinned by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedRef {
    /// Registry host (when given) and repository path, e.g. `gcr.io/team/app`.
    pub repo: String,
    /// The tag given beside the digest, informational.
    pub tag: Option<String>,
    /// `sha256:...`.
    pub digest: String,
}

impl PinnedRef {
    /// Parse `url`, refusing anything not pinned by a well-formed digest.
    pub fn parse(url: &str) -> Result<PinnedRef, ReferenceError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let Some((name, digest)) = url.split_once('@') else {
            let (repo, _) = split_tag(url);
            return Err(ReferenceError::NotPinned(url.to_string(), repo.to_string()));
        };
        if !valid_digest(digest) {
            return Err(ReferenceError::BadDigest(url.to_string()));
        }
        let (repo, tag) = split_tag(name);
        let repo_ok = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "._-:".contains(ch))
            });
        if !repo_ok || tag.is_some_and(|t| t.is_empty()) {
            return Err(ReferenceError::BadRepository(url.to_string()));
        }
        Ok(PinnedRef {
            repo: repo.to_string(),
            tag: tag.map(str::to_string),
            digest: digest.to_string(),
        })
    }

    /// The record of this image as the server knows it: identity and platform only, since a
    /// pinned URL carries no build metadata (the CLI's `deploy` reads that from the registry).
    pub fn image_record(&self, platform: Platform) -> ImageRecord {
        ImageRecord {
            repo: self.repo.clone(),
            tag: self.tag.clone(),
            digest: self.digest.clone(),
            index_digest: None,
            platform,
            description: None,
            built_at: None,
            revision: None,
            source: None,
            title: None,
        }
    }

    /// The repository path without the registry host: the default app name.
    pub fn path(&self) -> &str {
        match self.repo.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                rest
            }
            _ => &self.repo,
        }
    }
}

/// `repo:tag` → (`repo`, Some(`tag`)); a `:` before the last `/` is a host port, not a tag.
fn split_tag(name: &str) -> (&str, Option<&str>) {
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    }
}

fn valid_digest(digest: &str) -> bool {
    let hex_len = |h: &str, n: usize| {
        h.len() == n
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match digest.split_once(':') {
        Some(("sha256", h)) => hex_len(h, 64),
        Some(("sha512", h)) => hex_len(h, 128),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:698e0b6c22c8922b2c4ed257afbff40bcfe6597c744648f695f907598d3f6b5c";

    #[test]
    fn pinned_forms() {
        let r = PinnedRef::parse(&format!("gcr.io/atomist/bot-service@{D}")).unwrap();
        assert_eq!(r.repo, "gcr.io/atomist/bot-service");
        assert_eq!(r.path(), "atomist/bot-service");
        assert_eq!(r.tag, None);
        let r = PinnedRef::parse(&format!("localhost:5000/app:1.2@{D}")).unwrap();
        assert_eq!(
            (r.repo.as_str(), r.tag.as_deref(), r.path()),
            ("localhost:5000/app", Some("1.2"), "app")
        );
        assert_eq!(
            PinnedRef::parse(&format!("nginx@{D}")).unwrap().path(),
            "nginx"
        );
    }

    #[test]
    fn refused_forms() {
        assert!(matches!(
            PinnedRef::parse("localhost:5000/app:1.2"),
            Err(ReferenceError::NotPinned(_, repo)) if repo == "localhost:5000/app"
        ));
        assert!(matches!(
            PinnedRef::parse("app@sha256:abc"),
            Err(ReferenceError::BadDigest(_))
        ));
        assert!(matches!(
            PinnedRef::parse(&format!("../x@{D}")),
            Err(ReferenceError::BadRepository(_))
        ));
        assert_eq!(PinnedRef::parse(" "), Err(ReferenceError::Empty));
    }
}
