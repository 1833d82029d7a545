//! Image references pinned by digest: `host/repository[:tag]@sha256:<64 hex>`. Tags move, so
//! the deployments API and the admission webhook in enforce mode take nothing else. Parsing is
//! [`crate::reference`]'s, the same grammar and digest check as the CLI's.

use thiserror::Error;

use crate::records::{ImageRecord, Platform};
use crate::reference::{ImageRef, ReferenceError as GrammarError};

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
    /// The repository or tag part breaks the reference grammar.
    #[error("image {0:?} is not a valid image reference: {1}")]
    BadRepository(String, String),
}

/// An image reference pinned by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedRef {
    /// Normalised registry host and repository path, e.g. `gcr.io/team/app`,
    /// `docker.io/library/nginx`.
    pub repo: String,
    /// The tag given beside the digest, informational.
    pub tag: Option<String>,
    /// `sha256:...` or `sha512:...`.
    pub digest: String,
    /// The default app name, see [`PinnedRef::path`].
    familiar: String,
}

impl PinnedRef {
    /// Parse `url` by the one reference grammar ([`ImageRef`]), refusing anything not pinned
    /// by a well-formed digest. The repository is stored normalised (`nginx@…` is
    /// `docker.io/library/nginx`), as `imagetrail deploy` stores it.
    pub fn parse(url: &str) -> Result<PinnedRef, ReferenceError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let parsed = ImageRef::parse(url).map_err(|e| match e {
            GrammarError::Empty => ReferenceError::Empty,
            GrammarError::BadDigest(_) => ReferenceError::BadDigest(url.to_string()),
            other => ReferenceError::BadRepository(url.to_string(), other.to_string()),
        })?;
        let Some(digest) = parsed.digest.clone() else {
            // Suggest the name as the user wrote it, without its tag.
            let given = match &parsed.tag {
                Some(t) => url
                    .strip_suffix(t.as_str())
                    .and_then(|u| u.strip_suffix(':')),
                None => Some(url),
            };
            let name = given.map_or_else(|| parsed.repo(), str::to_string);
            return Err(ReferenceError::NotPinned(url.to_string(), name));
        };
        Ok(PinnedRef {
            repo: parsed.repo(),
            tag: parsed.tag.clone(),
            digest,
            familiar: parsed.familiar_path().to_string(),
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

    /// The default app name: the familiar path, without the registry host and, on Docker
    /// Hub, without `library/` (`nginx`, `team/app`), the same rule as `imagetrail deploy`.
    pub fn path(&self) -> &str {
        &self.familiar
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:698e0b6c22c8922b2c4ed257afbff40bcfe6597c744648f695f907598d3f6b5c";

    #[test]
    fn pinned_forms() {
        let r = PinnedRef::parse(&format!("GCR.io/atomist/bot-service@{D}")).unwrap();
        assert_eq!(r.repo, "gcr.io/atomist/bot-service");
        assert_eq!(r.path(), "atomist/bot-service");
        assert_eq!(r.tag, None);
        let r = PinnedRef::parse(&format!("localhost:5000/app:1.2@{D}")).unwrap();
        assert_eq!(
            (r.repo.as_str(), r.tag.as_deref(), r.path()),
            ("localhost:5000/app", Some("1.2"), "app")
        );
        let n = PinnedRef::parse(&format!("nginx@{D}")).unwrap();
        assert_eq!(
            (n.repo.as_str(), n.path()),
            ("docker.io/library/nginx", "nginx")
        );
        let s = PinnedRef::parse(&format!("a@sha512:{}", "0f".repeat(64))).unwrap();
        assert_eq!(s.digest.len(), "sha512:".len() + 128);
    }

    #[test]
    fn refused_forms() {
        assert!(matches!(
            PinnedRef::parse("localhost:5000/app:1.2"),
            Err(ReferenceError::NotPinned(_, repo)) if repo == "localhost:5000/app"
        ));
        assert!(matches!(
            PinnedRef::parse(&format!("Registry.io/Team/app@{D}")),
            Err(ReferenceError::BadRepository(..))
        ));
        assert!(matches!(
            PinnedRef::parse("app@sha256:abc"),
            Err(ReferenceError::BadDigest(_))
        ));
        assert!(matches!(
            PinnedRef::parse(&format!("../x@{D}")),
            Err(ReferenceError::BadRepository(..))
        ));
        assert_eq!(PinnedRef::parse(" "), Err(ReferenceError::Empty));
    }
}
