//! The lean view of a history that the delivery metrics and the timeline need: per deployment
//! only when, which digest and when that image was built ([`DeliveryPoint`]), digests interned
//! per history ([`Digests`]) so a point owns no string and rollbacks compare two integers.
//!
//! The YAML store reads points straight from the writer's fixed lines
//! ([`super::OpenHistory::points_rev`]); any other store can build the same points from three
//! columns (`deployed_at`, `digest`, `built_at`) with [`DeliveryPoints::push`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Deployment;

/// A digest interned in one [`Digests`]: equal ids are equal digests (within that table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DigestId(u32);

impl DigestId {
    /// Its index in its table, from 0 (a dense index: `Digests::len` ids).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One deployment as the delivery metrics read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPoint {
    /// When it was deployed.
    pub deployed_at: DateTime<Utc>,
    /// What was deployed (the platform manifest's digest), in the history's [`Digests`].
    pub digest: DigestId,
    /// When its image was built: `built_at` when it is readable RFC 3339 (see [`built_time`]),
    /// else `None`.
    pub built_at: Option<DateTime<Utc>>,
    /// Where the whole entry is stored, to read it when a page shows it: for the YAML store
    /// the byte offset of the entry in `deploy-history.yml`
    /// ([`super::OpenHistory::entry_at`]).
    pub offset: u64,
}

impl DeliveryPoint {
    /// The point of an entry from its stored values: `digest` interned in `digests`,
    /// `built_at` as stored (an unreadable one counts as missing, see [`built_time`]).
    #[inline]
    pub fn stored(
        deployed_at: DateTime<Utc>,
        digest: &str,
        built_at: Option<&str>,
        offset: u64,
        digests: &mut Digests,
    ) -> DeliveryPoint {
        DeliveryPoint {
            deployed_at,
            digest: digests.intern(digest),
            built_at: built_at.and_then(built_time),
            offset,
        }
    }
}

/// The `built_at` time a lead time is measured from: the value when it is RFC 3339 (spaces
/// around it ignored), else `None`.
pub fn built_time(s: &str) -> Option<DateTime<Utc>> {
    super::history::writer_time(s).or_else(|| {
        DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

/// A digest table: every distinct digest stored once, in one growing buffer, so interning the
/// digest of each of hundreds of thousands of entries allocates nothing per entry.
///
/// A table may grow on a shared, frozen one ([`Digests::on`]): the server's point cache hands
/// each request its history's table that way, so a request copies no digest, and what the
/// request adds stays its own.
#[derive(Debug, Clone, Default)]
pub struct Digests {
    /// The shared table this one grows on: its ids are `0..base_len`, this table's own follow.
    base: Option<Arc<Digests>>,
    base_len: u32,
    text: String,
    spans: Vec<(u32, u32)>,
    /// Hash of a digest -> the first id with that hash.
    by_hash: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    /// Digests whose hash an earlier, different digest already took (a crafted collision):
    /// still found exactly, only slower.
    collided: HashMap<Box<str>, u32>,
}

impl Digests {
    /// An empty table growing on `base`: every id of `base` means the same digest here, and
    /// digests not in `base` get the ids after them. Costs no copy of `base`.
    pub fn on(base: Arc<Digests>) -> Digests {
        Digests {
            base_len: base.len() as u32,
            base: Some(base),
            ..Default::default()
        }
    }

    /// The id of `digest`, added when new.
    pub fn intern(&mut self, digest: &str) -> DigestId {
        use std::collections::hash_map::Entry;
        // An empty base (a first read of a history) is not asked: one hash per digest less.
        if self.base_len > 0
            && let Some(id) = self.base.as_ref().and_then(|b| b.find(digest))
        {
            return id;
        }
        let h = hash(digest.as_bytes());
        let first = self.base_len;
        match self.by_hash.entry(h) {
            Entry::Vacant(v) => {
                let id = push(&mut self.text, &mut self.spans, digest);
                v.insert(id);
                DigestId(first + id)
            }
            Entry::Occupied(o) => {
                let id = *o.get();
                if span(&self.text, self.spans[id as usize]) == digest {
                    return DigestId(first + id);
                }
                if let Some(&id) = self.collided.get(digest) {
                    return DigestId(first + id);
                }
                let id = push(&mut self.text, &mut self.spans, digest);
                self.collided.insert(digest.into(), id);
                DigestId(first + id)
            }
        }
    }

    /// The id of `digest` if it is in the table.
    pub fn find(&self, digest: &str) -> Option<DigestId> {
        if self.base_len > 0
            && let Some(id) = self.base.as_ref().and_then(|b| b.find(digest))
        {
            return Some(id);
        }
        let first = self.base_len;
        let id = *self.by_hash.get(&hash(digest.as_bytes()))?;
        if span(&self.text, self.spans[id as usize]) == digest {
            return Some(DigestId(first + id));
        }
        self.collided.get(digest).map(|&id| DigestId(first + id))
    }

    /// The digest of `id`.
    ///
    /// # Panics
    /// When `id` is not from this table.
    pub fn get(&self, id: DigestId) -> &str {
        match (&self.base, id.0.checked_sub(self.base_len)) {
            (Some(b), None) => b.get(id),
            (_, Some(own)) => span(&self.text, self.spans[own as usize]),
            (None, None) => unreachable!("no base table, so base_len is 0"),
        }
    }

    /// How many distinct digests (with those of the base table).
    pub fn len(&self) -> usize {
        self.base_len as usize + self.spans.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This table without its base, when the base is empty (the same ids); else unchanged.
    pub fn without_base(mut self) -> Digests {
        if self.base_len == 0 {
            self.base = None;
        }
        self
    }

    /// Give back the room reserved for growth (a table kept for long, as the point cache's).
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.spans.shrink_to_fit();
        self.by_hash.shrink_to_fit();
    }

    /// This table's own digests (not its base's), in the order of their ids.
    pub fn own(&self) -> impl Iterator<Item = &str> {
        self.spans.iter().map(|&s| span(&self.text, s))
    }

    /// About how many bytes of heap this table holds of its own (not its base's): what the
    /// server's point cache counts against its budget.
    pub fn heap_bytes(&self) -> usize {
        // A hash map slot: its key and value and a control byte.
        self.text.capacity()
            + self.spans.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.by_hash.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
            + self
                .collided
                .keys()
                .map(|k| k.len() + std::mem::size_of::<(Box<str>, u32)>() + 1)
                .sum::<usize>()
    }
}

fn push(text: &mut String, spans: &mut Vec<(u32, u32)>, digest: &str) -> u32 {
    // Offsets fit u32: a history's window holds far less than 4 GiB of digests.
    spans.push((text.len() as u32, digest.len() as u32));
    text.push_str(digest);
    (spans.len() - 1) as u32
}

fn span(text: &str, (from, len): (u32, u32)) -> &str {
    &text[from as usize..(from + len) as usize]
}

/// A fast 64-bit hash of a digest (FxHash-style, 8 bytes a step). Not collision-resistant:
/// [`Digests`] compares the bytes behind every hit, so a collision costs time, never a wrong
/// answer.
fn hash(b: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in chunks.by_ref() {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    for &c in chunks.remainder() {
        h = (h.rotate_left(5) ^ u64::from(c)).wrapping_mul(K);
    }
    h
}

/// The keys of [`Digests::by_hash`] are hashes already: used as they are.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Points of one history with their digest table.
#[derive(Debug, Clone, Default)]
pub struct DeliveryPoints {
    /// The points, in the order asked for (oldest first from [`super::OpenHistory::points`]).
    pub points: Vec<DeliveryPoint>,
    /// The digests they name.
    pub digests: Digests,
}

impl DeliveryPoints {
    /// Add a point from the three stored columns (`built_at` as stored; an unreadable one
    /// counts as missing, see [`built_time`]).
    pub fn push(
        &mut self,
        deployed_at: DateTime<Utc>,
        digest: &str,
        built_at: Option<&str>,
        offset: u64,
    ) {
        let point = DeliveryPoint::stored(deployed_at, digest, built_at, offset, &mut self.digests);
        self.points.push(point);
    }

    /// Add the point of a whole deployment.
    pub fn push_deployment(&mut self, d: &Deployment, offset: u64) {
        self.push(
            d.deployment.deployed_at,
            &d.image.digest,
            d.image.built_at.as_deref(),
            offset,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_digests_get_one_id_and_colliding_hashes_stay_apart() {
        let mut d = Digests::default();
        let a = d.intern("sha256:aaaa");
        let b = d.intern("sha256:bbbb");
        assert_ne!(a, b);
        assert_eq!(d.intern("sha256:aaaa"), a);
        assert_eq!(d.get(b), "sha256:bbbb");
        assert_eq!(d.find("sha256:bbbb"), Some(b));
        assert_eq!(d.find("sha256:cccc"), None);
        // Force a collision: a different digest filed under a's hash.
        let h = hash(b"sha256:zzzz");
        d.by_hash.insert(h, a.0);
        let z = d.intern("sha256:zzzz");
        assert_ne!(z, a);
        assert_eq!(d.intern("sha256:zzzz"), z);
        assert_eq!(d.find("sha256:zzzz"), Some(z));
        assert_eq!(d.get(z), "sha256:zzzz");
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn a_table_on_a_shared_one_keeps_its_ids_and_adds_after_them() {
        let mut base = Digests::default();
        let a = base.intern("sha256:aaaa");
        let b = base.intern("sha256:bbbb");
        let base = Arc::new(base);
        let mut d = Digests::on(base.clone());
        assert_eq!(d.intern("sha256:bbbb"), b);
        assert_eq!(d.find("sha256:aaaa"), Some(a));
        let c = d.intern("sha256:cccc");
        assert_eq!(c.index(), 2);
        assert_eq!(d.intern("sha256:cccc"), c);
        assert_eq!((d.get(a), d.get(c)), ("sha256:aaaa", "sha256:cccc"));
        assert_eq!(d.len(), 3);
        assert_eq!(base.len(), 2, "the shared table is not changed");
        assert_eq!(base.find("sha256:cccc"), None);
    }

    #[test]
    fn built_times_are_read_like_rfc3339() {
        for s in [
            "2026-03-01T10:00:00Z",
            " 2026-03-01T10:00:00Z ",
            "2026-03-01T10:00:00.5+02:00",
            "2026-02-30T10:00:00Z",
            "2026-03-01T24:00:00Z",
            "2026-03-01T23:59:60Z",
            "2026-03-01 10:00:00Z",
            "yesterday",
            "",
        ] {
            let want = DateTime::parse_from_rfc3339(s.trim())
                .ok()
                .map(|t| t.with_timezone(&Utc));
            assert_eq!(built_time(s), want, "{s:?}");
        }
    }
}
