//! The delivery points of each history kept in memory between reads, so that `imagetrail
//! serve` reads of a history only the bytes appended since its last read (the delivery
//! metrics and the timeline read the same 30 or 90 days of 250 histories on every request).
//!
//! Why this is safe: a history is append-only (the writer appends whole entries under a lock;
//! a cut-off append leaves a torn tail that is never read as an entry), so the points of the
//! entries before a byte offset never change while the file is the same file. What is kept,
//! per history path:
//!
//! * the file's identity (device, inode) and the last bytes of what was read (up to
//!   [`FINGERPRINT`]: the end of the last entry, with its unique `event_id`): a history
//!   replaced by another file (a rename over it, even one that reuses the inode) or rewritten
//!   in place is read again whole;
//! * the points of the entries in `[start, end)`, oldest first, and their digest table:
//!   `end` is where the whole entries ended at the last read (a torn tail is not cached: it is
//!   read again, as an entry once it is complete); `start` is as far back as a read went (a
//!   read that goes further back extends it, so the cache holds what the requests read, e.g.
//!   the last 30 or 90 days, not whole histories).
//!
//! A read first brings the entry up to date (reads `[end, whole end)` of the file, under the
//! entry's own lock), then serves the newest points from memory and anything older than
//! `start` from the file, exactly as the uncached reader would ([`super::OpenHistory::points_rev`]).
//! Any doubt (a file that shrank, a malformed new entry, another request that changed the
//! entry meanwhile) falls back to that reader for the request and re-reads the history later.
//!
//! Memory: a point is [`POINT_BYTES`] bytes; a digest costs its text plus about 21 bytes in
//! its table (about 95 bytes for a `sha256:` digest), so a history where every deployment is a
//! new image costs about 140 bytes per cached point. The total is capped by the budget given
//! to [`PointCache::new`]: past it, the histories read least recently are dropped whole (and
//! read from their files again when asked for).

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use super::backend::PointStream;
use super::points::{DeliveryPoint, Digests};
use super::range::PointsRev;
use super::{OpenHistory, RecordsError};

/// Bytes of one cached point (its digest is counted in its history's table).
pub const POINT_BYTES: usize = std::mem::size_of::<DeliveryPoint>();

/// How many bytes before the cached end are compared on each read, to see a history that was
/// replaced or rewritten rather than appended to.
pub const FINGERPRINT: u64 = 64;

/// The default budget of `imagetrail serve` (`--points-cache-mib`): 64 MiB, about 480,000
/// points of distinct digests (30 days of one deployment an hour in 650 histories).
pub const DEFAULT_BUDGET_MIB: usize = 64;

/// Delivery points of many histories, shared by the clones of one [`super::Store`] (see the
/// module documentation).
#[derive(Debug)]
pub struct PointCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_path: HashMap<PathBuf, Slot>,
    /// The bytes of every entry, as last counted.
    total: usize,
    /// Bumped on every use, for least-recently-used eviction.
    tick: u64,
}

#[derive(Debug)]
struct Slot {
    entry: Arc<Mutex<Entry>>,
    bytes: usize,
    used: u64,
}

/// One history's cached points.
#[derive(Debug, Default)]
struct Entry {
    /// The file's (device, inode); `None`: nothing cached.
    id: Option<(u64, u64)>,
    /// The offset of the oldest cached entry.
    start: u64,
    /// Where the whole entries ended when last read.
    end: u64,
    /// The bytes `[end - FINGERPRINT, end)` (fewer at the start of the file).
    tail: Vec<u8>,
    /// The points of the entries in `[start, end)`, oldest first.
    points: Arc<Vec<DeliveryPoint>>,
    /// The digests they name.
    digests: Arc<Digests>,
    /// Bumped on every change, so a read only extends the entry it started from.
    generation: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        std::mem::size_of::<Entry>()
            + self.points.capacity() * POINT_BYTES
            + self.digests.heap_bytes()
            + self.tail.capacity()
    }

    fn reset(&mut self) {
        let generation = self.generation + 1;
        *self = Entry {
            generation,
            ..Entry::default()
        };
    }
}

impl PointCache {
    /// An empty cache holding at most about `budget` bytes.
    pub fn new(budget: usize) -> PointCache {
        PointCache {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The budget, in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The bytes held now (as last counted).
    pub fn held(&self) -> usize {
        self.lock().total
    }

    /// How many points are held now, over every history.
    pub fn points(&self) -> usize {
        let slots: Vec<_> = self
            .lock()
            .by_path
            .values()
            .map(|s| s.entry.clone())
            .collect();
        slots.iter().map(|e| lock(e).points.len()).sum()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the map inconsistent: every change is one statement.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry of `path`, created empty when new.
    fn slot(&self, path: &Path) -> Arc<Mutex<Entry>> {
        let mut inner = self.lock();
        inner.tick += 1;
        let used = inner.tick;
        let slot = inner
            .by_path
            .entry(path.to_path_buf())
            .or_insert_with(|| Slot {
                entry: Arc::default(),
                bytes: 0,
                used,
            });
        slot.used = used;
        slot.entry.clone()
    }

    /// Count `bytes` for the entry of `path` (when it is still `entry`), then drop the least
    /// recently used entries until the total fits the budget.
    fn settle(&self, path: &Path, entry: &Arc<Mutex<Entry>>, bytes: usize) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(slot) = inner.by_path.get_mut(path)
            && Arc::ptr_eq(&slot.entry, entry)
        {
            inner.total = inner.total - slot.bytes + bytes;
            slot.bytes = bytes;
        }
        while inner.total > self.budget {
            let Some(oldest) = inner
                .by_path
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            if let Some(s) = inner.by_path.remove(&oldest) {
                inner.total -= s.bytes;
            }
        }
    }
}

fn lock(e: &Mutex<Entry>) -> MutexGuard<'_, Entry> {
    e.lock().unwrap_or_else(|p| p.into_inner())
}

/// The last bytes before `end`, `None` when the file no longer has them.
fn tail_of(h: &OpenHistory, end: u64) -> Option<Vec<u8>> {
    let file = h.file()?;
    let from = end.saturating_sub(FINGERPRINT);
    let mut buf = vec![0; (end - from) as usize];
    file.read_exact_at(&mut buf, from).ok()?;
    Some(buf)
}

/// Bring `e` up to date with `h`: the same file, appended to (or not) since; a different or
/// rewritten file starts `e` over, empty at the file's whole end. `false` when the new entries
/// cannot be read as points (then `e` is empty again and the read goes to the file).
fn refresh(e: &mut Entry, h: &OpenHistory, id: (u64, u64)) -> bool {
    let whole_end = h.whole_end();
    let same = e.id == Some(id) && tail_of(h, e.end).is_some_and(|t| t == e.tail);
    if !same {
        e.reset();
        e.id = Some(id);
        e.start = whole_end;
        e.end = whole_end;
        return take_tail(e, h, whole_end);
    }
    if e.end >= whole_end {
        // Nothing new, or another request saw more of the file already.
        return true;
    }
    let table = std::mem::take(Arc::make_mut(&mut e.digests));
    let mut rev = h.points_between(e.end, whole_end, table);
    let mut new = Vec::new();
    loop {
        match rev.next_point() {
            Ok(Some(p)) => new.push(p),
            Ok(None) => break,
            Err(_) => {
                e.reset();
                return false;
            }
        }
    }
    *Arc::make_mut(&mut e.digests) = rev.into_digests();
    new.reverse();
    Arc::make_mut(&mut e.points).extend(new);
    e.end = whole_end;
    e.generation += 1;
    take_tail(e, h, whole_end)
}

/// Remember the bytes before `end` as the entry's fingerprint; false (and the entry emptied)
/// when they cannot be read.
fn take_tail(e: &mut Entry, h: &OpenHistory, end: u64) -> bool {
    match tail_of(h, end) {
        Some(t) => {
            e.tail = t;
            true
        }
        None => {
            e.reset();
            false
        }
    }
}

/// The points of `h` deployed at or before `until`, newest first, from `cache` and the file
/// (see the module documentation): the same points, in the same order, as
/// [`OpenHistory::points_rev`].
pub(super) fn points_rev<'a>(
    cache: &Arc<PointCache>,
    h: &'a OpenHistory,
    until: Option<DateTime<Utc>>,
) -> Result<Box<dyn PointStream + 'a>, RecordsError> {
    // No file (an app without history) or no metadata: the uncached reader says what is there.
    let Some(meta) = h.file().and_then(|f| f.metadata().ok()) else {
        return Ok(Box::new(h.points_rev(until)?));
    };
    let id = (meta.dev(), meta.ino());
    let slot = cache.slot(h.path());
    let (points, base, start, generation, bytes) = {
        let mut e = lock(&slot);
        if !refresh(&mut e, h, id) {
            drop(e);
            cache.settle(h.path(), &slot, std::mem::size_of::<Entry>());
            return Ok(Box::new(h.points_rev(until)?));
        }
        (
            e.points.clone(),
            e.digests.clone(),
            e.start,
            e.generation,
            e.bytes(),
        )
    };
    cache.settle(h.path(), &slot, bytes);
    // What this read sees ends at its own whole end (the cache may be ahead of it).
    let whole_end = h.whole_end();
    let seen = points.partition_point(|p| p.offset < whole_end);
    let mut limit = whole_end;
    let mut file_rev;
    if seen > 0 && start <= whole_end {
        if let Some(u) = until
            && points[seen - 1].deployed_at > u
        {
            limit = h.end_until(u)?;
        }
        file_rev = h.points_between(0, start.min(limit), Digests::on(base.clone()));
    } else {
        // Nothing cached for this read: as the uncached reader, peek at the newest entry.
        file_rev = h.points_between(0, whole_end, Digests::on(base.clone()));
        if let Some(u) = until
            && let Some(p) = file_rev.next_point()?
        {
            if p.deployed_at <= u {
                file_rev.put_back(p);
            } else {
                limit = h.end_until(u)?;
                file_rev = h.points_between(0, limit, Digests::on(base.clone()));
            }
        }
    }
    let next = points.partition_point(|p| p.offset < limit);
    Ok(Box::new(Cached {
        cache: cache.clone(),
        slot,
        path: h.path().to_path_buf(),
        points,
        next,
        file: file_rev,
        read: Vec::new(),
        contiguous: limit >= start,
        generation,
        base_len: base.len(),
        failed: false,
    }))
}

/// A read served from the cache, then from the file below the cached start.
struct Cached<'a> {
    cache: Arc<PointCache>,
    slot: Arc<Mutex<Entry>>,
    path: PathBuf,
    points: Arc<Vec<DeliveryPoint>>,
    /// `points[..next]` are still to be returned, newest (highest index) first.
    next: usize,
    file: PointsRev<'a>,
    /// Points read from the file, newest first: added to the cache when the read ends.
    read: Vec<DeliveryPoint>,
    /// Whether the file is read from the cached start down (its points can extend the entry).
    contiguous: bool,
    generation: u64,
    base_len: usize,
    failed: bool,
}

impl PointStream for Cached<'_> {
    fn next_point(&mut self) -> Result<Option<DeliveryPoint>, RecordsError> {
        if self.next > 0 {
            self.next -= 1;
            return Ok(Some(self.points[self.next]));
        }
        match self.file.next_point() {
            Ok(Some(p)) => {
                if self.contiguous {
                    self.read.push(p);
                }
                Ok(Some(p))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn into_digests(self: Box<Self>) -> Digests {
        let this = *self;
        let extend = this.contiguous
            && !this.failed
            && !this.read.is_empty()
            && this.file.at_entry_boundary();
        let digests = this.file.into_digests();
        if !extend {
            return digests;
        }
        extend_entry(
            &this.cache,
            &this.path,
            &this.slot,
            this.generation,
            this.base_len,
            this.read,
            digests,
        )
    }
}

/// Add the points a read took from the file below the cached start (`read`, newest first,
/// their new digests in `digests` after `base_len`) to the entry, when it is still the one
/// the read started from and the result fits the budget. Returns the read's digest table
/// (the cache's own when the read filled an empty entry: a first read copies no digest).
fn extend_entry(
    cache: &PointCache,
    path: &Path,
    slot: &Arc<Mutex<Entry>>,
    generation: u64,
    base_len: usize,
    mut read: Vec<DeliveryPoint>,
    digests: Digests,
) -> Digests {
    let mut out = digests;
    let bytes = {
        let mut e = lock(slot);
        if e.generation != generation || e.digests.len() != base_len {
            return out;
        }
        let own: usize = out.own().map(|d| d.len() + 24).sum();
        if e.bytes() + read.len() * POINT_BYTES + own > cache.budget() {
            return out;
        }
        if base_len == 0 {
            // A first read: its table becomes the entry's, shared with the read (without the
            // room reserved for growth: up to half of it, kept for as long as the entry).
            let mut table = out.without_base();
            table.shrink_to_fit();
            let table = Arc::new(table);
            out = Digests::on(table.clone());
            e.digests = table;
        } else {
            let table = Arc::make_mut(&mut e.digests);
            let agree = out
                .own()
                .enumerate()
                .all(|(k, d)| table.intern(d).index() == base_len + k);
            if !agree {
                // Cannot happen with one table per entry; never keep ids that disagree.
                e.reset();
                return out;
            }
        }
        e.start = read.last().map_or(e.start, |p| p.offset);
        read.reverse();
        if e.points.is_empty() {
            // A first read: its points become the entry's, not copied.
            read.shrink_to_fit();
            e.points = Arc::new(read);
        } else {
            read.extend(e.points.iter());
            e.points = Arc::new(read);
        }
        e.generation += 1;
        e.bytes()
    };
    cache.settle(path, slot, bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Deployment, DeploymentRecord, HistoryReader, ImageRecord, Store};
    use chrono::TimeZone;

    fn dep(app: &str, i: u32) -> Deployment {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
            + chrono::Duration::hours(i64::from(i));
        Deployment {
            app: app.into(),
            image: ImageRecord {
                tag: Some(format!("v{i}")),
                built_at: (!i.is_multiple_of(5))
                    .then(|| (at - chrono::Duration::minutes(30)).to_rfc3339()),
                ..ImageRecord::new(
                    format!("reg.example/{app}"),
                    // Every third deployment goes back to an earlier image.
                    format!("sha256:{:064x}", if i % 3 == 2 { i / 2 } else { i }),
                )
            },
            deployment: DeploymentRecord::new("prod", at, "alice"),
        }
    }

    type Seen = Vec<(DateTime<Utc>, String, Option<DateTime<Utc>>, u64)>;

    /// Every point of a read, with its digest's text; stops after `take` points.
    fn read(h: &dyn HistoryReader, until: Option<DateTime<Utc>>, take: usize) -> Seen {
        let mut rev = h.points_rev(until).unwrap();
        let mut out = Vec::new();
        let mut ids = Vec::new();
        while out.len() < take {
            let Some(p) = rev.next_point().unwrap() else {
                break;
            };
            ids.push(p.digest);
            out.push((p.deployed_at, String::new(), p.built_at, p.offset));
        }
        let digests = rev.into_digests();
        for (o, id) in out.iter_mut().zip(ids) {
            o.1 = digests.get(id).to_string();
        }
        out
    }

    fn hour(h: i64) -> Option<DateTime<Utc>> {
        Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(h))
    }

    #[test]
    fn cached_reads_equal_the_files_within_the_budget_and_after_a_rewrite_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let plain = Store::new(dir.path());
        for app in ["a", "b", "c"] {
            for i in 0..120 {
                plain.record(&dep(app, i)).unwrap();
            }
        }
        // What one history of 120 points costs, to give the cache room for about one.
        let probe = Arc::new(PointCache::new(usize::MAX));
        let probed = plain.clone().with_point_cache(probe.clone());
        read(&probed.open_history("prod", "a").unwrap(), None, usize::MAX);
        let one = probe.held();
        assert_eq!(probe.points(), 120);
        let cache = Arc::new(PointCache::new(one * 3 / 2));
        let cached = plain.clone().with_point_cache(cache.clone());
        for round in 0..3 {
            for app in ["a", "b", "c"] {
                for (until, take) in [
                    (None, 10),
                    (None, usize::MAX),
                    (hour(100), 30),
                    (hour(-1), 5),
                ] {
                    let want = read(&plain.open_history("prod", app).unwrap(), until, take);
                    let got = read(&cached.open_history("prod", app).unwrap(), until, take);
                    assert_eq!(
                        got, want,
                        "round {round}, {app}, until {until:?}, {take} points"
                    );
                    assert!(
                        cache.held() <= cache.budget(),
                        "{} > {}",
                        cache.held(),
                        cache.budget()
                    );
                }
            }
            plain.record(&dep("a", 200 + round)).unwrap();
        }
        // History a rewritten in place (same inode), longer, other images: read again.
        let other = tempfile::tempdir().unwrap();
        let store2 = Store::new(other.path());
        for i in 0..150 {
            store2.record(&dep("a", 1000 + i)).unwrap();
        }
        let path = dir.path().join("prod/a/deploy-history.yml");
        let _ = read(&cached.open_history("prod", "a").unwrap(), None, usize::MAX);
        std::fs::write(
            &path,
            std::fs::read(other.path().join("prod/a/deploy-history.yml")).unwrap(),
        )
        .unwrap();
        let want = read(&plain.open_history("prod", "a").unwrap(), None, usize::MAX);
        assert_eq!(want.len(), 150);
        assert_eq!(
            read(&cached.open_history("prod", "a").unwrap(), None, usize::MAX),
            want
        );
    }
}
