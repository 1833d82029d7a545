//! Manifests and image configs as registries serve them: OCI and Docker v2 manifests and
//! indexes, told apart by media type or, when a registry leaves that out, by shape.

use std::collections::HashMap;

use serde::Deserialize;

use super::Platform;

/// Every manifest type understood; sent on every manifest request (a narrower list makes
/// distribution answer 404 for OCI manifests and indexes).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A manifest as fetched.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its digest (sha256 of the bytes).
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// The raw bytes.
    pub bytes: Vec<u8>,
}

impl Manifest {
    /// A fetched manifest; the `mediaType` inside the body wins over the `Content-Type` the
    /// registry answered with (some registries send a generic one).
    pub(super) fn new(digest: String, media_type: String, bytes: Vec<u8>) -> Manifest {
        let mut m = Manifest {
            digest,
            media_type,
            bytes,
        };
        if let Ok(IndexJson {
            media_type: Some(mt),
            ..
        }) = m.json::<IndexJson>()
        {
            m.media_type = mt;
        }
        m
    }

    /// Whether it is an index / manifest list.
    pub fn is_index(&self) -> bool {
        INDEX_TYPES.contains(&self.media_type.as_str())
            || self.json::<IndexJson>().is_ok_and(|j| {
                j.manifests.is_some()
                    && j.media_type
                        .as_deref()
                        .is_none_or(|m| INDEX_TYPES.contains(&m))
            })
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.bytes)
    }

    /// The children of an index (digest, platform), in order.
    pub fn children(&self) -> Vec<(String, Option<Platform>)> {
        self.json::<IndexJson>()
            .ok()
            .and_then(|j| j.manifests)
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                (
                    m.digest,
                    m.platform.map(|p| Platform {
                        os: p.os,
                        architecture: p.architecture,
                        variant: p.variant,
                    }),
                )
            })
            .collect()
    }

    /// The config blob digest of an image manifest.
    pub fn config_digest(&self) -> Option<String> {
        self.json::<ImageManifestJson>()
            .ok()
            .map(|m| m.config.digest)
    }

    /// The manifest's annotations (OCI `annotations`).
    pub fn annotations(&self) -> HashMap<String, String> {
        self.json::<ImageManifestJson>()
            .ok()
            .and_then(|m| m.annotations)
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct IndexJson {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<IndexEntry>>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    platform: Option<PlatformJson>,
}

#[derive(Deserialize)]
struct PlatformJson {
    os: String,
    architecture: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct ImageManifestJson {
    config: Descriptor,
    annotations: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

/// The parts of an image config blob we read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    /// The config's `created` time.
    pub created: Option<String>,
    /// `config.Labels`.
    #[serde(default)]
    pub config: ConfigSection,
    /// `os`.
    pub os: Option<String>,
    /// `architecture`.
    pub architecture: Option<String>,
    /// `variant`.
    pub variant: Option<String>,
}

/// `config` inside the config blob.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigSection {
    /// Labels (`LABEL` in a Dockerfile).
    #[serde(rename = "Labels", default)]
    pub labels: Option<HashMap<String, String>>,
}

impl ImageConfig {
    /// The labels, with the manifest's annotations filling in keys the labels lack.
    pub fn labels(&self) -> HashMap<String, String> {
        self.config.labels.clone().unwrap_or_default()
    }
}
