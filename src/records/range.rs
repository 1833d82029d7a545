//! Reads of a history by range, built on [`super::history::HistoryFile`]'s entry boundaries:
//!
//! * the last N entries, found by stepping back N entry starts from the end of the file (reads
//!   a few kilobytes per entry returned, whatever the history's length);
//! * `since`/`until` bounds, found by the same bisection over byte offsets as
//!   [`Store::at`] (entries are appended in time order);
//! * a whole range streamed entry by entry through a [`HistoryCursor`], which parses one window
//!   of about [`WINDOW`] bytes at a time, so the memory of `imagetrail history` stays flat in
//!   the history's length.
//!
//! A torn last entry is never returned: it is reported beside the entries (as
//! [`Store::read_history`] does), and the bounds stop before it.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::history::{self, HistoryFile};
use super::point_cache::PointCache;
use super::points::{DeliveryPoint, DeliveryPoints, Digests};
use super::{Deployment, HistoryRead, RecordsError, Store, TornTail, open_existing, to_deployment};

/// Which entries of one history to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryRange {
    /// Only entries deployed at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only entries deployed at or before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only the newest this many entries (of those within the time bounds).
    pub last: Option<usize>,
}

/// How many bytes of history a [`HistoryCursor`] parses at once (rounded up to whole entries).
/// A parsed entry takes a few times its bytes, so one window costs well under 1 MiB.
pub const WINDOW: u64 = 128 * 1024;

/// A history read lazily, oldest first: entries are parsed one window at a time.
pub struct HistoryCursor {
    app: String,
    file: Option<File>,
    path: PathBuf,
    pos: u64,
    end: u64,
    window: u64,
    ready: VecDeque<Deployment>,
    torn: Option<TornTail>,
}

impl std::fmt::Debug for HistoryCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryCursor")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .field("end", &self.end)
            .finish()
    }
}

impl HistoryCursor {
    /// The torn last entry, if an append was cut off (reported once, not returned).
    pub fn torn(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// Parse at most this many bytes at once (at least one entry is always parsed).
    pub fn with_window(mut self, bytes: u64) -> HistoryCursor {
        self.window = bytes.max(1);
        self
    }

    /// The next entry, oldest first; `Ok(None)` at the end of the range.
    pub fn next_entry(&mut self) -> Result<Option<Deployment>, RecordsError> {
        if let Some(d) = self.ready.pop_front() {
            return Ok(Some(d));
        }
        let Some(file) = &self.file else {
            return Ok(None);
        };
        while self.pos < self.end {
            let h = HistoryFile::new(file, &self.path)?;
            let stop = h
                .next_start(self.pos.saturating_add(self.window))?
                .unwrap_or(self.end)
                .min(self.end);
            let entries = h.range(self.pos, stop)?;
            self.pos = stop;
            self.ready
                .extend(entries.into_iter().map(|e| to_deployment(&self.app, e)));
            if let Some(d) = self.ready.pop_front() {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }
}

impl Iterator for HistoryCursor {
    type Item = Result<Deployment, RecordsError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_entry() {
            Ok(Some(d)) => Some(Ok(d)),
            Ok(None) => None,
            Err(e) => {
                // An error ends the iteration: the rest cannot be located reliably.
                self.file = None;
                self.ready.clear();
                Some(Err(e))
            }
        }
    }
}

/// One history opened once, its tail checked once, for several bounded reads (the delivery
/// metrics read a window, its look-back and the entry before that: one open, one tail check).
#[derive(Debug)]
pub struct OpenHistory {
    app: String,
    path: PathBuf,
    file: Option<File>,
    /// The file's length when opened.
    len: u64,
    whole_end: u64,
    torn: Option<TornTail>,
    /// The server's cache of delivery points, when the store has one
    /// ([`super::point_cache`]): [`super::HistoryReader::points_rev`] serves from it.
    pub(super) cache: Option<Arc<PointCache>>,
}

impl OpenHistory {
    /// The open file, `None` when the history does not exist.
    pub(super) fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// The history's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the whole entries end: the file's length, or where its torn tail starts.
    pub(super) fn whole_end(&self) -> u64 {
        self.whole_end
    }

    /// Where the entries deployed at or before `until` end (bisection, as every bounded read).
    pub(super) fn end_until(&self, until: DateTime<Utc>) -> Result<u64, RecordsError> {
        let Some(file) = &self.file else {
            return Ok(0);
        };
        let h = HistoryFile::with_len(file, &self.path, self.len);
        let range = HistoryRange {
            until: Some(until),
            ..Default::default()
        };
        Ok(bounds(&h, self.whole_end, range)?.1)
    }

    /// The points of the entries in `[floor, end)` (entry boundaries), newest first, their
    /// digests interned in `digests`.
    pub(super) fn points_between(&self, floor: u64, end: u64, digests: Digests) -> PointsRev<'_> {
        let mut rev = PointsRev::new(self, floor, end);
        rev.digests = digests;
        rev
    }

    /// The torn last entry, if an append was cut off (never returned as an entry).
    pub fn torn(&self) -> Option<&TornTail> {
        self.torn.as_ref()
    }

    /// The entries within `range`, oldest first, held in memory (meant for small ranges).
    pub fn read(&self, range: HistoryRange) -> Result<Vec<Deployment>, RecordsError> {
        let Some(file) = &self.file else {
            return Ok(Vec::new());
        };
        let h = HistoryFile::new(file, &self.path)?;
        let (from, end) = bounds(&h, self.whole_end, range)?;
        Ok(h.range(from, end)?
            .into_iter()
            .map(|e| to_deployment(&self.app, e))
            .collect())
    }

    /// The points (deployed at, digest, built at) of the entries within `range`, oldest
    /// first: what [`OpenHistory::read`] returns, without building a [`Deployment`] per entry.
    pub fn points(&self, range: HistoryRange) -> Result<DeliveryPoints, RecordsError> {
        let Some(file) = &self.file else {
            return Ok(DeliveryPoints::default());
        };
        let h = HistoryFile::with_len(file, &self.path, self.len);
        let (from, end) = bounds(&h, self.whole_end, range)?;
        let mut rev = PointsRev::new(self, from, end);
        let mut points = Vec::new();
        while let Some(p) = rev.next_point()? {
            points.push(p);
        }
        points.reverse();
        Ok(DeliveryPoints {
            points,
            digests: rev.digests,
        })
    }

    /// The points of the entries deployed at or before `until` (all when `None`), newest
    /// first, read backwards from the end of the file as the caller asks for them: a caller
    /// that stops after the last 30 days reads only those. When the newest entry is after
    /// `until`, the end is found by bisection first.
    pub fn points_rev(&self, until: Option<DateTime<Utc>>) -> Result<PointsRev<'_>, RecordsError> {
        let mut rev = PointsRev::new(self, 0, self.whole_end);
        let Some(u) = until else {
            return Ok(rev);
        };
        if let Some(newest) = rev.next_point()? {
            if newest.deployed_at <= u {
                rev.pending.push(newest);
            } else {
                rev = PointsRev::new(self, 0, self.end_until(u)?);
            }
        }
        Ok(rev)
    }

    /// The whole entry of a point (its [`DeliveryPoint::offset`]), e.g. for the rows a page
    /// shows.
    pub fn entry_at(&self, offset: u64) -> Result<Deployment, RecordsError> {
        let malformed = |message: &str| RecordsError::Malformed {
            path: self.path.clone(),
            line: 0,
            message: message.into(),
        };
        let Some(file) = &self.file else {
            return Err(malformed("the history is empty"));
        };
        let h = HistoryFile::with_len(file, &self.path, self.len);
        // Up to the next entry, and never into a torn tail (which may be a bare `-`).
        let end = h
            .next_start(offset + 1)?
            .unwrap_or(self.whole_end)
            .min(self.whole_end);
        let mut bytes = Vec::new();
        h.read_into(offset, end.saturating_sub(offset) as usize, &mut bytes)?;
        match h.parse_chunk(offset, &bytes)?.into_iter().next() {
            Some(e) => Ok(to_deployment(&self.app, e)),
            None => Err(malformed("no entry starts at this offset")),
        }
    }

    /// The most recent entry deployed before `before` whose digest (or index digest) is
    /// `digest` (see [`Store::last_with_digest_before`]).
    pub fn last_with_digest_before(
        &self,
        digest: &str,
        before: DateTime<Utc>,
    ) -> Result<Option<Deployment>, RecordsError> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let h = HistoryFile::new(file, &self.path)?;
        let (_, mut end) = bounds(
            &h,
            self.whole_end,
            HistoryRange {
                until: Some(before - chrono::Duration::nanoseconds(1)),
                ..Default::default()
            },
        )?;
        let needle = super::yaml::quote(digest);
        while let Some(start) = h.last_containing(needle.as_bytes(), end)? {
            let e = h.parse_entry(start)?;
            if e.image.digest == digest || e.image.index_digest.as_deref() == Some(digest) {
                return Ok(Some(to_deployment(&self.app, e)));
            }
            end = start;
        }
        Ok(None)
    }
}

/// How many bytes [`PointsRev`] reads at a time, backwards (about 150 entries).
const BACK_BLOCK: u64 = 64 * 1024;

/// The points of one history, newest first, read backwards one block at a time (see
/// [`OpenHistory::points_rev`]). Each entry is read by the lean reader
/// ([`history::lean_entry`]: three values from the writer's fixed lines, no allocation);
/// an entry in any other shape goes through the full reader, so both give the same points
/// and the same errors.
pub struct PointsRev<'a> {
    file: Option<&'a File>,
    path: &'a Path,
    len: u64,
    /// Entries starting before this are not read.
    floor: u64,
    /// The bytes `[floor, end)` are not loaded yet.
    end: u64,
    block: Vec<u8>,
    /// The file offset of `block[0]`.
    block_off: u64,
    /// Entry starts in `block` not read yet, ascending.
    starts: Vec<usize>,
    /// Where in `block` the last unread entry ends.
    block_end: usize,
    /// Points already read, popped from the end (newest first).
    pending: Vec<DeliveryPoint>,
    digests: Digests,
}

impl std::fmt::Debug for PointsRev<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointsRev")
            .field("path", &self.path)
            .field("floor", &self.floor)
            .field("end", &self.end)
            .finish()
    }
}

impl<'a> PointsRev<'a> {
    fn new(h: &'a OpenHistory, floor: u64, end: u64) -> PointsRev<'a> {
        PointsRev {
            file: h.file.as_ref(),
            path: &h.path,
            len: h.len,
            floor,
            end: if h.file.is_some() { end } else { floor },
            block: Vec::new(),
            block_off: 0,
            starts: Vec::new(),
            block_end: 0,
            pending: Vec::new(),
            digests: Digests::default(),
        }
    }

    /// The digests the points returned so far name.
    pub fn digests(&self) -> &Digests {
        &self.digests
    }

    /// The digest table, to keep beside the points.
    pub fn into_digests(self) -> Digests {
        self.digests
    }

    /// Whether the points returned so far end at an entry boundary: false only while points
    /// of one chunk read by the full reader are still waiting (they share an offset).
    pub(super) fn at_entry_boundary(&self) -> bool {
        self.pending.is_empty()
    }

    /// Put a point read ahead back, to be returned next.
    pub(super) fn put_back(&mut self, p: DeliveryPoint) {
        self.pending.push(p);
    }

    /// The next point, newest first; `Ok(None)` past the oldest. A malformed entry is an
    /// error with its file and line, as for every other read.
    pub fn next_point(&mut self) -> Result<Option<DeliveryPoint>, RecordsError> {
        loop {
            if let Some(p) = self.pending.pop() {
                return Ok(Some(p));
            }
            let Some(s) = self.starts.pop() else {
                if !self.load()? {
                    return Ok(None);
                }
                continue;
            };
            let bytes = &self.block[s..self.block_end];
            self.block_end = s;
            let offset = self.block_off + s as u64;
            if let Ok(text) = std::str::from_utf8(bytes)
                && let Some(l) = history::lean_entry(text)
            {
                return Ok(Some(DeliveryPoint::stored(
                    l.deployed_at,
                    l.digest,
                    l.built_at,
                    offset,
                    &mut self.digests,
                )));
            }
            // Any other shape: the full reader, which also reports what is wrong.
            let Some(file) = self.file else {
                return Ok(None);
            };
            let h = HistoryFile::with_len(file, self.path, self.len);
            for e in h.parse_chunk(offset, bytes)? {
                self.pending.push(DeliveryPoint::stored(
                    e.deployment.deployed_at,
                    &e.image.digest,
                    e.image.built_at.as_deref(),
                    offset,
                    &mut self.digests,
                ));
            }
        }
    }

    /// Load the block before the bytes read so far; `false` when nothing is left.
    fn load(&mut self) -> Result<bool, RecordsError> {
        let Some(file) = self.file else {
            return Ok(false);
        };
        let h = HistoryFile::with_len(file, self.path, self.len);
        let mut size = BACK_BLOCK;
        while self.end > self.floor {
            let lo = self.end.saturating_sub(size).max(self.floor);
            // One byte before the block, to see the newline before an entry starting at `lo`.
            let from = lo.saturating_sub(1);
            h.read_into(from, (self.end - from) as usize, &mut self.block)?;
            self.block_off = from;
            self.starts.clear();
            if lo == 0 && self.block.starts_with(b"- ") {
                self.starts.push(0);
            }
            for i in memchr::memchr_iter(b'\n', &self.block) {
                if self.block.get(i + 1) == Some(&b'-') && self.block.get(i + 2) == Some(&b' ') {
                    self.starts.push(i + 1);
                }
            }
            if let Some(&first) = self.starts.first() {
                self.block_end = self.block.len();
                self.end = from + first as u64;
                return Ok(true);
            }
            if lo == self.floor {
                // Only text before the first entry (comments): no entry.
                self.end = self.floor;
                break;
            }
            // An entry longer than the block: read further back at once.
            size = size.saturating_mul(4);
        }
        Ok(false)
    }
}

impl Store {
    /// Open the history of `app` in `env` for several bounded reads; a missing history reads
    /// as empty.
    pub fn open_history(&self, env: &str, app: &str) -> Result<OpenHistory, RecordsError> {
        let path = self.history_path(env, app)?;
        let Some(file) = open_existing(&path)? else {
            return Ok(OpenHistory {
                app: app.to_string(),
                path,
                file: None,
                len: 0,
                whole_end: 0,
                torn: None,
                cache: self.points.clone(),
            });
        };
        let (len, whole_end, torn) = {
            let h = HistoryFile::new(&file, &path)?;
            let torn = h.check_tail()?;
            (h.len(), torn.as_ref().map_or(h.len(), |t| t.offset), torn)
        };
        Ok(OpenHistory {
            app: app.to_string(),
            path,
            file: Some(file),
            len,
            whole_end,
            torn,
            cache: self.points.clone(),
        })
    }

    /// The entries of `app` in `env` within `range`, streamed oldest first. Only the bounds
    /// are searched for up front (bisection and a backwards walk of `last` entries); the
    /// entries themselves are parsed as the cursor advances.
    pub fn history_cursor(
        &self,
        env: &str,
        app: &str,
        range: HistoryRange,
    ) -> Result<HistoryCursor, RecordsError> {
        let path = self.history_path(env, app)?;
        let mut cursor = HistoryCursor {
            app: app.to_string(),
            file: None,
            path,
            pos: 0,
            end: 0,
            window: WINDOW,
            ready: VecDeque::new(),
            torn: None,
        };
        let Some(file) = open_existing(&cursor.path)? else {
            return Ok(cursor);
        };
        let (from, end, torn) = {
            let h = HistoryFile::new(&file, &cursor.path)?;
            let torn = h.check_tail()?;
            let whole_end = torn.as_ref().map_or(h.len(), |t| t.offset);
            let (from, end) = bounds(&h, whole_end, range)?;
            (from, end, torn)
        };
        cursor.file = Some(file);
        cursor.pos = from;
        cursor.end = end;
        cursor.torn = torn;
        Ok(cursor)
    }

    /// The entries of `app` in `env` within `range`, oldest first, held in memory: meant for
    /// small ranges (`last`, a few days); use [`Store::history_cursor`] for a whole history.
    pub fn read_history_window(
        &self,
        env: &str,
        app: &str,
        range: HistoryRange,
    ) -> Result<HistoryRead, RecordsError> {
        let mut cursor = self.history_cursor(env, app, range)?;
        let mut entries = Vec::new();
        while let Some(d) = cursor.next_entry()? {
            entries.push(d);
        }
        Ok(HistoryRead {
            entries,
            torn: cursor.torn,
        })
    }
}

/// Several histories read together, merged by `deployed_at` (ties keep the order of the pairs
/// given, then file order), each entry's `workspace` set to its environment. Memory is one
/// window per history, so the budget is split between them.
#[derive(Debug)]
pub struct MergedHistory {
    cursors: Vec<(String, HistoryCursor)>,
    heads: std::collections::BinaryHeap<std::cmp::Reverse<(DateTime<Utc>, usize)>>,
    pending: Vec<Option<Deployment>>,
    torn: Vec<TornTail>,
    broken: Vec<RecordsError>,
}

/// The memory budget of a [`MergedHistory`] for its windows, split between its histories.
const MERGED_BUDGET: u64 = 4 * 1024 * 1024;

impl MergedHistory {
    /// Open the histories of `pairs` (environment, app) within `range` each. A history that
    /// cannot be read (a hand-broken entry: [`RecordsError::Malformed`] with its file and line)
    /// does not hide the others: it is left out and reported by [`MergedHistory::into_report`].
    pub fn open(store: &Store, pairs: &[(String, String)], range: HistoryRange) -> MergedHistory {
        let window = (MERGED_BUDGET / pairs.len().max(1) as u64).clamp(8 * 1024, WINDOW);
        let mut m = MergedHistory {
            cursors: Vec::with_capacity(pairs.len()),
            heads: Default::default(),
            pending: Vec::with_capacity(pairs.len()),
            torn: Vec::new(),
            broken: Vec::new(),
        };
        for (env, app) in pairs {
            let opened = store.history_cursor(env, app, range).and_then(|c| {
                let mut c = c.with_window(window);
                let head = c.next_entry()?;
                Ok((c, head))
            });
            let (c, head) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    m.broken.push(e);
                    continue;
                }
            };
            m.torn.extend(c.torn.clone());
            if let Some(d) = &head {
                m.heads.push(std::cmp::Reverse((
                    d.deployment.deployed_at,
                    m.cursors.len(),
                )));
            }
            m.pending.push(head);
            m.cursors.push((env.clone(), c));
        }
        m
    }

    /// The next entry in time order across the histories; a history that breaks part way is
    /// reported by [`MergedHistory::into_report`] and the others go on.
    pub fn next_entry(&mut self) -> Option<Deployment> {
        let std::cmp::Reverse((_, i)) = self.heads.pop()?;
        let (env, cursor) = &mut self.cursors[i];
        let next = cursor.next_entry().unwrap_or_else(|e| {
            self.broken.push(e);
            None
        });
        if let Some(d) = &next {
            self.heads
                .push(std::cmp::Reverse((d.deployment.deployed_at, i)));
        }
        let mut out = std::mem::replace(&mut self.pending[i], next);
        if let Some(d) = &mut out {
            d.deployment.workspace = env.clone();
        }
        out
    }

    /// What was met besides the entries: torn tails and broken histories.
    pub fn into_report(self) -> MergeReport {
        MergeReport {
            torn: self.torn,
            broken: self.broken,
        }
    }
}

/// What reading several histories met besides their entries.
#[derive(Debug, Default)]
pub struct MergeReport {
    /// Torn last entries (the whole entries before each were read).
    pub torn: Vec<TornTail>,
    /// Histories that could not be read whole, each with its file and line.
    pub broken: Vec<RecordsError>,
}

/// Call `f` on every entry of the histories of `pairs` within `range`, merged in time order;
/// with `range.last`, only the newest `last` of the merged entries (held, so memory is
/// `last` entries). Torn tails and broken histories come back in the report.
pub fn for_each_merged<E>(
    store: &Store,
    pairs: &[(String, String)],
    range: HistoryRange,
    f: &mut dyn FnMut(&Deployment) -> Result<(), E>,
) -> Result<MergeReport, E> {
    let mut m = MergedHistory::open(store, pairs, range);
    match range.last {
        Some(n) => {
            let mut tail = VecDeque::with_capacity(n.min(4096));
            while let Some(d) = m.next_entry() {
                if tail.len() == n {
                    tail.pop_front();
                }
                if n > 0 {
                    tail.push_back(d);
                }
            }
            tail.iter().try_for_each(f)?;
        }
        None => {
            while let Some(d) = m.next_entry() {
                f(&d)?;
            }
        }
    }
    Ok(m.into_report())
}

impl Store {
    /// The most recent entry of `app` in `env` deployed before `before` whose digest (or
    /// index digest) is `digest`, by a reverse substring search bounded by a bisection.
    pub fn last_with_digest_before(
        &self,
        env: &str,
        app: &str,
        digest: &str,
        before: DateTime<Utc>,
    ) -> Result<Option<Deployment>, RecordsError> {
        self.open_history(env, app)?
            .last_with_digest_before(digest, before)
    }
}

/// The byte range `[from, end)` of the entries within `range`, among the whole entries before
/// `whole_end`.
fn bounds(
    h: &HistoryFile<'_>,
    whole_end: u64,
    range: HistoryRange,
) -> Result<(u64, u64), RecordsError> {
    let mut from = match range.since {
        // The first entry after the last one strictly before `since`.
        Some(s) => match h.at(s - chrono::Duration::nanoseconds(1), whole_end)? {
            Some(before) => h
                .next_start(before + 1)?
                .unwrap_or(whole_end)
                .min(whole_end),
            None => 0,
        },
        None => 0,
    };
    let end = match range.until {
        Some(u) => match h.at(u, whole_end)? {
            Some(last) => h.next_start(last + 1)?.unwrap_or(whole_end).min(whole_end),
            None => 0,
        },
        None => whole_end,
    };
    if let Some(n) = range.last {
        // Step back n entry starts from the end; each step reads backwards from the last.
        let mut start = end;
        for _ in 0..n {
            match h.prev_start(start)? {
                Some(s) if s >= from => start = s,
                _ => {
                    start = from;
                    break;
                }
            }
        }
        from = from.max(start);
        if n == 0 {
            from = end;
        }
    }
    Ok((from.min(end), end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{DeploymentRecord, ImageRecord, built_time};
    use chrono::TimeZone;

    fn dep(i: u32) -> Deployment {
        Deployment {
            app: "web".into(),
            image: ImageRecord {
                tag: Some(format!("v{i}")),
                ..ImageRecord::new("reg.example/web", format!("sha256:{i:064x}"))
            },
            deployment: DeploymentRecord::new(
                "prod",
                Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                    + chrono::Duration::hours(i64::from(i)),
                "alice",
            ),
        }
    }

    fn store_with(n: u32) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        for i in 0..n {
            store.record(&dep(i)).unwrap();
        }
        (dir, store)
    }

    fn tags(read: &HistoryRead) -> Vec<String> {
        read.entries
            .iter()
            .map(|d| d.image.tag.clone().unwrap())
            .collect()
    }

    #[test]
    fn last_n_from_the_end_within_time_bounds() {
        let (_d, store) = store_with(10);
        let r = |range| store.read_history_window("prod", "web", range).unwrap();
        let last3 = r(HistoryRange {
            last: Some(3),
            ..Default::default()
        });
        assert_eq!(tags(&last3), ["v7", "v8", "v9"]);
        let more_than_all = r(HistoryRange {
            last: Some(50),
            ..Default::default()
        });
        assert_eq!(more_than_all.entries.len(), 10);
        let none = r(HistoryRange {
            last: Some(0),
            ..Default::default()
        });
        assert!(none.entries.is_empty());
        // Hours 2..=5 are v2..v5; the last 2 of them are v4, v5.
        let t = |h| Utc.with_ymd_and_hms(2026, 1, 1, h, 0, 0).unwrap();
        let bounded = r(HistoryRange {
            since: Some(t(2)),
            until: Some(t(5)),
            last: Some(2),
        });
        assert_eq!(tags(&bounded), ["v4", "v5"]);
        let since_only = r(HistoryRange {
            since: Some(t(8)),
            ..Default::default()
        });
        assert_eq!(tags(&since_only), ["v8", "v9"]);
        let before_all = r(HistoryRange {
            until: Some(t(0) - chrono::Duration::seconds(1)),
            ..Default::default()
        });
        assert!(before_all.entries.is_empty());
    }

    #[test]
    fn a_cursor_with_a_tiny_window_returns_every_entry_once_in_order() {
        let (_d, store) = store_with(25);
        let cursor = store
            .history_cursor("prod", "web", HistoryRange::default())
            .unwrap()
            .with_window(1);
        let got: Vec<String> = cursor
            .map(|d| d.unwrap().image.tag.unwrap())
            .collect::<Vec<_>>();
        let want: Vec<String> = (0..25).map(|i| format!("v{i}")).collect();
        assert_eq!(got, want);
    }

    /// What the full reader reads, as points: (deployed_at, digest, built_at).
    type Seen = (DateTime<Utc>, String, Option<DateTime<Utc>>);

    fn full(store: &Store, range: HistoryRange) -> Result<(Vec<Seen>, Option<TornTail>), String> {
        let read = store
            .read_history_window("prod", "web", range)
            .map_err(|e| e.to_string())?;
        let seen = read
            .entries
            .iter()
            .map(|d| {
                (
                    d.deployment.deployed_at,
                    d.image.digest.clone(),
                    d.image.built_at.as_deref().and_then(built_time),
                )
            })
            .collect();
        Ok((seen, read.torn))
    }

    /// What the lean reader reads; `deep` also reads each point's whole entry back by offset.
    fn lean(
        store: &Store,
        range: HistoryRange,
        deep: bool,
    ) -> Result<(Vec<Seen>, Option<TornTail>), String> {
        let h = store
            .open_history("prod", "web")
            .map_err(|e| e.to_string())?;
        let p = h.points(range).map_err(|e| e.to_string())?;
        let seen: Vec<Seen> = p
            .points
            .iter()
            .map(|q| {
                (
                    q.deployed_at,
                    p.digests.get(q.digest).to_string(),
                    q.built_at,
                )
            })
            .collect();
        // Newest first in one backwards pass gives the same, and each offset reads its entry.
        if range == HistoryRange::default() {
            let mut rev = h.points_rev(None).map_err(|e| e.to_string())?;
            let mut back = Vec::new();
            while let Some(q) = rev.next_point().map_err(|e| e.to_string())? {
                if deep {
                    let whole = h.entry_at(q.offset).map_err(|e| e.to_string())?;
                    assert_eq!(whole.deployment.deployed_at, q.deployed_at);
                    assert_eq!(whole.image.digest, rev.digests().get(q.digest));
                }
                back.push((
                    q.deployed_at,
                    rev.digests().get(q.digest).to_string(),
                    q.built_at,
                ));
            }
            back.reverse();
            assert_eq!(back, seen, "points_rev against points");
        }
        Ok((seen, h.torn().cloned()))
    }

    /// Label values a careless user or an attacker sends (any characters are stored, escaped).
    const HOSTILE: &[&str] = &[
        "quote \" backslash \\ newline \n tab \t esc \u{1b} nel \u{85}",
        "\u{FFFE}\u{FFFF}\u{FDD0}\u{1FFFE}\u{10FFFF}\u{0}\u{7}\r\u{2028}\u{2029}\u{FEFF}\u{202E}",
        "- image:\n    digest: \"sha256:evil\"\n  deployment:",
        "    deployed_at: \"1999-01-01T00:00:00Z\"",
        "\"2026-01-01T00:00:00Z\"",
        "ünï 🙂: # - x { [ & * ! | > % @ `",
        "",
        " ",
    ];

    #[test]
    fn the_lean_and_the_full_reader_agree_on_hostile_values_hand_edits_and_torn_tails() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        // The k-th deployment, at hour n: hostile labels, every kind of built_at, rollbacks.
        let record = |k: u32, n: u32| {
            let mut d = dep(n);
            let h = HOSTILE[k as usize % HOSTILE.len()];
            d.image.description = Some(h.repeat(1 + (k as usize % 3)));
            d.image.revision = Some(h.into());
            d.image.title = Some(h.into());
            d.image.built_at = match k % 6 {
                0 => None,
                1 => Some(crate::output::time(
                    &(d.deployment.deployed_at - chrono::Duration::minutes(40)),
                )),
                2 => Some(h.into()),
                3 => Some(" 2026-01-01T05:00:00+02:00 ".into()),
                4 => Some("2026-01-01T05:00:00.25Z".into()),
                _ => Some("2026-02-30T05:00:00Z".into()),
            };
            if k % 7 == 6 {
                // A rollback: a digest that ran before.
                d.image.digest = format!("sha256:{:064x}", n / 2);
            }
            if k == 150 {
                // An entry longer than a backwards block.
                d.image.description = Some("x".repeat(crate::records::MAX_LABEL));
            }
            store.record(&d).unwrap();
        };
        for k in 0..400 {
            record(k, k);
        }
        let path = store.history_path("prod", "web").unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() as u64 > 3 * BACK_BLOCK, "{}", text.len());
        // Hand-written entries in other shapes the YAML reader reads (the lean reader leaves
        // them to it): reordered keys, other quoting, comments, CRLF line ends, no platform.
        let t = |h: i64| {
            crate::output::time(
                &(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(h)),
            )
        };
        let uuid = "0190d7a0-0000-7000-8000-000000000000";
        text.push_str(&format!(
            "- image:\n    digest: \"sha256:{:064x}\"\n    repo: \"reg.example/web\"\n  \
             deployment:\n    deployed_by: alice\n    deployed_at: '{}'\n    workspace: \"prod\"\n    \
             event_id: \"{uuid}\"\n\n",
            1,
            t(1000)
        ));
        text.push_str(&format!(
            "# a note\n- image:\n    repo: \"reg.example/web\"\n    digest: \"sha256:{:064x}\"\n    \
             built_at: \"{}\"   # built\n\n  deployment:\n    deployed_at: \"{}\"\n    \
             deployed_by: \"bob\"\n    workspace: \"prod\"\n    event_id: \"{uuid}\"\n\n",
            2,
            t(999),
            t(1001)
        ));
        let crlf = crate::records::yaml::history_entry(&{
            let mut d = dep(1002);
            d.image.built_at = Some(t(1002));
            d
        })
        .replace('\n', "\r\n");
        text.push_str(&crlf);
        std::fs::write(&path, &text).unwrap();
        for k in 400..410 {
            record(k, k + 603);
        }
        let all = HistoryRange::default();
        let want = full(&store, all).unwrap();
        assert_eq!(want.0.len(), 413);
        assert_eq!(lean(&store, all, true).unwrap(), want);
        // Bounded reads.
        let h = |x: i64| {
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(x)
        };
        for range in [
            HistoryRange {
                since: Some(h(100)),
                until: Some(h(1001)),
                last: None,
            },
            HistoryRange {
                since: None,
                until: Some(h(150)),
                last: Some(3),
            },
            HistoryRange {
                since: Some(h(1005)),
                until: None,
                last: None,
            },
            HistoryRange {
                since: Some(h(5000)),
                until: None,
                last: None,
            },
        ] {
            assert_eq!(
                lean(&store, range, false).unwrap(),
                full(&store, range).unwrap(),
                "{range:?}"
            );
        }
        // Every cut of an append: a torn tail (or, cut past its last line, a whole entry).
        let whole = std::fs::read(&path).unwrap();
        let last_start = String::from_utf8_lossy(&whole).rfind("\n- image:").unwrap() + 1;
        for cut in (last_start + 1..whole.len()).step_by(3) {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let want = full(&store, all).unwrap_or_else(|e| {
                panic!(
                    "cut {cut}: {e}: {:?}",
                    String::from_utf8_lossy(&whole[last_start..cut])
                )
            });
            let got = lean(&store, all, cut % 5 == 0).unwrap_or_else(|e| {
                panic!(
                    "lean, cut {cut} of {}: {e}: {:?}",
                    whole.len(),
                    String::from_utf8_lossy(&whole[last_start..cut])
                )
            });
            assert_eq!(got, want, "cut at {cut}");
        }
        // A hand-broken middle entry: the same error, with the same line, from both.
        let mut broken = String::from_utf8(whole).unwrap();
        let (at, _) = broken
            .match_indices("deployed_by: \"alice\"")
            .nth(200)
            .unwrap();
        broken.replace_range(at..at + 20, "deployed_by: \"ali\"ce\"");
        std::fs::write(&path, broken).unwrap();
        let want = full(&store, all).unwrap_err();
        assert!(want.contains("line"), "{want}");
        assert_eq!(lean(&store, all, false).unwrap_err(), want);
    }

    #[test]
    fn a_missing_history_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let mut c = store
            .history_cursor("prod", "nothing", HistoryRange::default())
            .unwrap();
        assert!(c.next_entry().unwrap().is_none());
    }
}
