//! `deploy-history.yml` at the byte level: entry boundaries, the torn-tail rule, appends and
//! the point-in-time search.
//!
//! An entry starts with `- ` at column 0 (everything inside an entry is indented), so entry
//! boundaries are found without parsing YAML. Entries are appended in time order, so "what ran
//! at T" is a bisection over byte offsets that reads a few kilobytes whatever the history's
//! length; only the entry returned (and the last entry, to detect a torn tail) is parsed.
//!
//! **Framing and the torn tail.** The writer appends each entry in exactly one shape
//! ([`yaml::history_entry`]): the line `- image:`, the image lines, a blank line,
//! `  deployment:`, the deployment lines, and last the *terminator*, the line
//! `    event_id: "<uuid>"` with its newline, followed by one blank line. A batch's entries are
//! one `write`, so a crash can leave at most one incomplete entry, at the end, and that entry is
//! a cut-off copy of what the writer writes. So the last entry is **torn** exactly when it does
//! not parse and it is a proper prefix of the writer's framing: it has no complete terminator
//! line, every complete line in it is a line the writer writes at that place (key, indentation,
//! order, a well-formed double-quoted value), and only its last, unfinished line may be cut
//! (even in the middle of a character). Readers report a torn tail with its line number and
//! still return the entries before it. The next append, under the lock, moves the torn bytes to
//! `deploy-history.yml.torn` (appended there with a comment saying where they came from) and
//! cuts them off the history before writing, so no new entry is built on them and no byte of a
//! complete entry is ever rewritten.
//!
//! Any other entry that does not parse (a stray quote, a deleted or reordered line, a complete
//! terminator with damage before it, with or without the final blank line) was edited by hand:
//! it is reported as [`RecordsError::Malformed`] with its file and line, nothing is moved or
//! overwritten, and appends to that history are refused until a person fixes it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::RecordsError;
use super::yaml::{self, HistoryEntry};

/// An incomplete last entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The history file.
    pub path: PathBuf,
    /// 1-based line where the incomplete entry starts.
    pub line: usize,
    /// Byte offset where it starts.
    pub offset: u64,
}

impl std::fmt::Display for TornTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: the last entry is incomplete (an append was cut off, e.g. by a crash); \
             the entries before it are intact; the next deploy moves it to {}.torn",
            self.path.display(),
            self.line,
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RecordsError + '_ {
    move |source| RecordsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Random access to the history file by byte offset, through `pread`.
pub struct HistoryFile<'a> {
    file: &'a File,
    path: &'a Path,
    len: u64,
}

const CHUNK: usize = 16 * 1024;

impl<'a> HistoryFile<'a> {
    /// Wrap an open history file.
    pub fn new(file: &'a File, path: &'a Path) -> Result<Self, RecordsError> {
        let len = file.metadata().map_err(io_err(path))?.len();
        Ok(HistoryFile { file, path, len })
    }

    /// Wrap an open history file whose length is already known (one `fstat` fewer for each of
    /// many small reads).
    pub fn with_len(file: &'a File, path: &'a Path, len: u64) -> Self {
        HistoryFile { file, path, len }
    }

    /// File length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, off: u64, len: usize) -> Result<Vec<u8>, RecordsError> {
        let mut buf = Vec::new();
        self.read_into(off, len, &mut buf)?;
        Ok(buf)
    }

    /// Read `len` bytes at `off` (fewer at the end of the file) into `buf`, replacing what it
    /// held and reusing its allocation.
    pub fn read_into(&self, off: u64, len: usize, buf: &mut Vec<u8>) -> Result<(), RecordsError> {
        let len = len.min((self.len - off.min(self.len)) as usize);
        buf.clear();
        buf.resize(len, 0);
        self.file.read_exact_at(buf, off).map_err(io_err(self.path))
    }

    /// The first entry start at or after `pos`, if any.
    pub fn next_start(&self, pos: u64) -> Result<Option<u64>, RecordsError> {
        if pos == 0 && self.read(0, 2)? == b"- " {
            return Ok(Some(0));
        }
        // Look for "\n- " whose "- " starts at or after pos. The first read is small (an
        // entry is a few hundred bytes, and a bisection asks this ~50 times per history);
        // later reads grow to CHUNK.
        let mut off = pos.saturating_sub(1);
        let mut size = 1024;
        while off < self.len {
            let buf = self.read(off, size + 2)?;
            let mut i = 0;
            while i + 2 < buf.len() {
                if buf[i] == b'\n' && buf[i + 1] == b'-' && buf[i + 2] == b' ' {
                    let start = off + i as u64 + 1;
                    if start >= pos {
                        return Ok(Some(start));
                    }
                }
                i += 1;
            }
            if buf.len() < size + 2 {
                break;
            }
            off += size as u64;
            size = (size * 4).min(CHUNK);
        }
        Ok(None)
    }

    /// The last entry start strictly before `end`, if any, scanning backwards.
    pub fn prev_start(&self, end: u64) -> Result<Option<u64>, RecordsError> {
        let mut hi = end.min(self.len);
        while hi > 0 {
            let lo = hi.saturating_sub(CHUNK as u64);
            // One byte before the chunk (to see the "\n") and two after (to see "- ").
            let from = lo.saturating_sub(1);
            let buf = self.read(from, (hi - from) as usize + 2)?;
            for p in (lo..hi).rev() {
                let i = (p - from) as usize;
                if buf.get(i) == Some(&b'-')
                    && buf.get(i + 1) == Some(&b' ')
                    && (p == 0 || buf[i - 1] == b'\n')
                {
                    return Ok(Some(p));
                }
            }
            hi = lo;
        }
        Ok(None)
    }

    /// The bytes of the entry starting at `start` (up to the next entry or the end).
    pub fn entry_bytes(&self, start: u64) -> Result<(Vec<u8>, u64), RecordsError> {
        let end = self.next_start(start + 1)?.unwrap_or(self.len);
        Ok((self.read(start, (end - start) as usize)?, end))
    }

    /// 1-based line number of byte offset `off` (counts newlines: only used for messages).
    pub fn line_of(&self, off: u64) -> Result<usize, RecordsError> {
        let mut lines = 1usize;
        let mut pos = 0u64;
        while pos < off {
            let buf = self.read(pos, CHUNK.min((off - pos) as usize))?;
            if buf.is_empty() {
                break;
            }
            lines += memchr::memchr_iter(b'\n', &buf).count();
            pos += buf.len() as u64;
        }
        Ok(lines)
    }

    /// The `deployed_at` of the entry at `start`, read from its `deployed_at:` line without a
    /// YAML parser. `None` when the entry has no readable one (torn or hand-edited).
    pub fn deployed_at(&self, start: u64) -> Result<Option<DateTime<Utc>>, RecordsError> {
        let (bytes, _) = self.entry_bytes(start)?;
        let text = String::from_utf8_lossy(&bytes);
        for l in text.lines() {
            let t = l.trim_start();
            if let Some(v) = t.strip_prefix("deployed_at:") {
                let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                return Ok(DateTime::parse_from_rfc3339(v)
                    .ok()
                    .map(|d| d.with_timezone(&Utc)));
            }
        }
        Ok(None)
    }

    /// Parse the entry at `start`; a problem is reported with its line in the file.
    pub fn parse_entry(&self, start: u64) -> Result<HistoryEntry, RecordsError> {
        let (bytes, _) = self.entry_bytes(start)?;
        self.parse_bytes(start, &bytes)
    }

    fn parse_bytes(&self, start: u64, bytes: &[u8]) -> Result<HistoryEntry, RecordsError> {
        let text = std::str::from_utf8(bytes).map_err(|_| RecordsError::Malformed {
            path: self.path.to_path_buf(),
            line: self.line_of(start).unwrap_or(0),
            message: "the entry is not valid UTF-8".into(),
        })?;
        if let Some(e) = yaml::fast_history_entry(text) {
            return Ok(e);
        }
        match yaml::parse::<Vec<HistoryEntry>>(text) {
            Ok(mut v) if v.len() == 1 => Ok(v.remove(0)),
            Ok(v) => Err(RecordsError::Malformed {
                path: self.path.to_path_buf(),
                line: self.line_of(start)?,
                message: format!("expected one entry here, found {}", v.len()),
            }),
            Err((line, message)) => Err(RecordsError::Malformed {
                path: self.path.to_path_buf(),
                line: self.line_of(start)? + line - 1,
                message,
            }),
        }
    }

    /// Check the last entry: `Ok(None)` when the file is empty or ends with a whole entry,
    /// `Ok(Some(torn))` for a torn tail, `Err(Malformed)` for a hand-edited broken last entry
    /// or text before the first entry that is not a comment.
    pub fn check_tail(&self) -> Result<Option<TornTail>, RecordsError> {
        // Cut right after the `-` that starts an entry: not yet an entry start (`- `), but a
        // prefix of one.
        if self.len > 0
            && self.read(self.len - 1, 1)? == b"-"
            && (self.len == 1 || self.read(self.len - 2, 1)? == b"\n")
        {
            return Ok(Some(TornTail {
                path: self.path.to_path_buf(),
                line: self.line_of(self.len - 1)?,
                offset: self.len - 1,
            }));
        }
        let Some(last) = self.prev_start(self.len)? else {
            let head = self.read(0, self.len as usize)?;
            let text = String::from_utf8_lossy(&head);
            if let Some((i, _)) = text
                .lines()
                .enumerate()
                .find(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            {
                return Err(RecordsError::Malformed {
                    path: self.path.to_path_buf(),
                    line: i + 1,
                    message: "expected a list entry starting with `- ` at column 0".into(),
                });
            }
            return Ok(None);
        };
        let (bytes, _) = self.entry_bytes(last)?;
        match self.parse_bytes(last, &bytes) {
            Ok(_) => Ok(None),
            Err(e) if !cut_off_writer_entry(&bytes) => Err(e),
            Err(_) => Ok(Some(TornTail {
                path: self.path.to_path_buf(),
                line: self.line_of(last)?,
                offset: last,
            })),
        }
    }

    /// The last entry whose `deployed_at` is at or before `t`, among entries starting before
    /// `end`, by bisection over byte offsets.
    pub fn at(&self, t: DateTime<Utc>, end: u64) -> Result<Option<u64>, RecordsError> {
        let (mut lo, mut hi) = (0u64, end);
        let mut best = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(s) = self.next_start(mid)?.filter(|&s| s < hi) else {
                hi = mid;
                continue;
            };
            let Some(ts) = self.deployed_at(s)? else {
                // No readable time: parse it to report what is wrong, with its line.
                self.parse_entry(s)?;
                return Err(RecordsError::Malformed {
                    path: self.path.to_path_buf(),
                    line: self.line_of(s)?,
                    message: "the entry has no readable deployed_at".into(),
                });
            };
            if ts <= t {
                best = Some(s);
                lo = s + 1;
            } else {
                hi = s;
            }
        }
        Ok(best)
    }

    /// Parse every entry starting in `[from, end)`, in order (`from` must be an entry start or
    /// 0). Returns the first malformed entry as an error, with its line.
    pub fn range(&self, from: u64, end: u64) -> Result<Vec<HistoryEntry>, RecordsError> {
        if from >= end {
            return Ok(vec![]);
        }
        let bytes = self.read(from, (end - from) as usize)?;
        let mut starts = Vec::new();
        let mut line_starts = Vec::new();
        // Lines relative to `from`: the absolute line (a scan from the file's start) is only
        // worked out for an error message, so reading a range costs its own bytes.
        let mut line = 1usize;
        if bytes.starts_with(b"- ") {
            starts.push(0usize);
            line_starts.push(line);
        }
        for i in memchr::memchr_iter(b'\n', &bytes) {
            line += 1;
            if bytes.get(i + 1) == Some(&b'-') && bytes.get(i + 2) == Some(&b' ') {
                starts.push(i + 1);
                line_starts.push(line);
            }
        }
        let mut out = Vec::with_capacity(starts.len());
        for (k, &s) in starts.iter().enumerate() {
            let e = starts.get(k + 1).copied().unwrap_or(bytes.len());
            let text = std::str::from_utf8(&bytes[s..e]).map_err(|_| RecordsError::Malformed {
                path: self.path.to_path_buf(),
                line: self.line_of(from).unwrap_or(1) + line_starts[k] - 1,
                message: "the entry is not valid UTF-8".into(),
            })?;
            if let Some(e) = yaml::fast_history_entry(text) {
                out.push(e);
                continue;
            }
            match yaml::parse::<Vec<HistoryEntry>>(text) {
                Ok(v) => out.extend(v),
                Err((l, message)) => {
                    return Err(RecordsError::Malformed {
                        path: self.path.to_path_buf(),
                        line: self.line_of(from)? + line_starts[k] - 1 + l - 1,
                        message,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Read the bytes of one entry starting at `start` (from its `- ` to the next entry) the
    /// way [`HistoryFile::range`] reads each entry: the entries in them (normally one; text
    /// that a hand edit made into several list items gives several), or the problem with its
    /// line in the file.
    pub fn parse_chunk(&self, start: u64, bytes: &[u8]) -> Result<Vec<HistoryEntry>, RecordsError> {
        let text = std::str::from_utf8(bytes).map_err(|_| RecordsError::Malformed {
            path: self.path.to_path_buf(),
            line: self.line_of(start).unwrap_or(1),
            message: "the entry is not valid UTF-8".into(),
        })?;
        if let Some(e) = yaml::fast_history_entry(text) {
            return Ok(vec![e]);
        }
        yaml::parse::<Vec<HistoryEntry>>(text).or_else(|(l, message)| {
            Err(RecordsError::Malformed {
                path: self.path.to_path_buf(),
                line: self.line_of(start)? + l - 1,
                message,
            })
        })
    }

    /// The start of the last entry before `end` whose bytes contain `needle` (e.g. a digest),
    /// found by a reverse substring search rather than by parsing every entry.
    pub fn last_containing(&self, needle: &[u8], end: u64) -> Result<Option<u64>, RecordsError> {
        // Backwards one block at a time (not the whole file at once: a 40 MB history would be
        // read and held for each digest asked about); blocks overlap by the needle's length.
        const BLOCK: u64 = 1 << 20;
        let end = end.min(self.len);
        let finder = memchr::memmem::FinderRev::new(needle);
        let overlap = (needle.len() as u64).saturating_sub(1);
        let mut hi = end;
        while hi > 0 {
            let lo = hi.saturating_sub(BLOCK);
            let top = hi.saturating_add(overlap).min(end);
            let bytes = self.read(lo, (top - lo) as usize)?;
            if let Some(pos) = finder.rfind(&bytes) {
                return self.prev_start(lo + pos as u64 + 1);
            }
            hi = lo;
        }
        Ok(None)
    }
}

/// One line of the writer's entry framing (see the module documentation).
#[derive(Clone, Copy)]
enum Frame {
    /// A line written exactly so.
    Literal(&'static str),
    /// `<indent><key>: "<value>"`.
    Key(&'static str, &'static str),
}

/// The lines of one entry as [`yaml::history_entry`] writes them, in order; `true` marks a
/// line left out when the field has no value. The last `Key` is the terminator.
const FRAMING: &[(Frame, bool)] = &[
    (Frame::Literal("- image:"), false),
    (Frame::Key("    ", "repo"), false),
    (Frame::Key("    ", "tag"), true),
    (Frame::Key("    ", "digest"), false),
    (Frame::Key("    ", "index_digest"), true),
    (Frame::Literal("    platform:"), false),
    (Frame::Key("      ", "os"), false),
    (Frame::Key("      ", "architecture"), false),
    (Frame::Key("      ", "variant"), true),
    (Frame::Key("    ", "description"), true),
    (Frame::Key("    ", "built_at"), true),
    (Frame::Key("    ", "revision"), true),
    (Frame::Key("    ", "source"), true),
    (Frame::Key("    ", "title"), true),
    (Frame::Literal(""), false),
    (Frame::Literal("  deployment:"), false),
    (Frame::Key("    ", "deployed_at"), false),
    (Frame::Key("    ", "deployed_by"), false),
    (Frame::Key("    ", "workspace"), false),
    (Frame::Key("    ", "name"), true),
    (Frame::Key("    ", "event_id"), false),
];

impl Frame {
    /// Whether the complete line `line` is this frame line.
    fn is(self, line: &str) -> bool {
        match self {
            Frame::Literal(l) => line == l,
            Frame::Key(indent, key) => line
                .strip_prefix(indent)
                .and_then(|r| r.strip_prefix(key))
                .and_then(|r| r.strip_prefix(": "))
                .is_some_and(yaml::is_quoted),
        }
    }

    /// Whether the unfinished line `partial` can be the start of this frame line.
    fn starts(self, partial: &str) -> bool {
        match self {
            Frame::Literal(l) => l.starts_with(partial),
            Frame::Key(indent, key) => {
                let head = format!("{indent}{key}: ");
                match partial.strip_prefix(head.as_str()) {
                    Some(value) => value.is_empty() || yaml::is_quoted_prefix(value),
                    None => head.starts_with(partial),
                }
            }
        }
    }
}

/// What the delivery metrics read of one entry, borrowed from its text (see [`lean_entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeanEntry<'a> {
    /// `deployed_at`.
    pub deployed_at: DateTime<Utc>,
    /// `digest`, as written (it had no escape).
    pub digest: &'a str,
    /// `built_at` as written (it had no escape), when the entry has one.
    pub built_at: Option<&'a str>,
}

/// Read `deployed_at`, `digest` and `built_at` of one entry written exactly as
/// [`yaml::history_entry`] writes it (the lines of [`FRAMING`], in order, each value a
/// well-formed double-quoted scalar, the three values read without escapes, a readable
/// `deployed_at` and `event_id`), without allocating. Anything else gives `None` and the
/// caller reads the entry with the full reader, which then also reports what is wrong: this
/// accepts only entries that [`yaml::fast_history_entry`] accepts, and reads the same values.
pub fn lean_entry(text: &str) -> Option<LeanEntry<'_>> {
    let b = text.as_bytes();
    let (mut deployed_at, mut digest, mut built_at) = (None, None, None);
    // The next frame line expected; past the terminator only blank lines may follow.
    let mut k = 0;
    let mut pos = 0;
    while pos < b.len() {
        let nl = memchr::memchr(b'\n', &b[pos..]).map_or(b.len(), |i| pos + i);
        let mut line = &text[pos..nl];
        if nl < b.len() {
            // As `str::lines` reads a "\r\n" line end.
            line = line.strip_suffix('\r').unwrap_or(line);
        }
        pos = nl + 1;
        if k == FRAMING.len() {
            if !line.is_empty() {
                return None;
            }
            continue;
        }
        let (j, value) = frame_of(line)?;
        // This frame line, or a later one when only optional ones are left out before it.
        if j < k || !FRAMING[k..j].iter().all(|&(_, optional)| optional) {
            return None;
        }
        k = j + 1;
        let Some(v) = value else { continue };
        match j {
            DIGEST => digest = Some(yaml::plain_quoted(v)?),
            BUILT_AT => built_at = Some(yaml::plain_quoted(v)?),
            DEPLOYED_AT => deployed_at = Some(parse_utc(yaml::plain_quoted(v)?)?),
            EVENT_ID => {
                let id = yaml::plain_quoted(v)?;
                if !hyphenated_uuid(id) {
                    id.parse::<uuid::Uuid>().ok()?;
                }
            }
            _ if !yaml::is_quoted(v) => return None,
            _ => {}
        }
    }
    if k != FRAMING.len() {
        return None;
    }
    Some(LeanEntry {
        deployed_at: deployed_at?,
        digest: digest?,
        built_at,
    })
}

/// Whether `s` is a UUID in the hyphenated form the writer writes (which `Uuid`'s parser
/// always accepts), checked without the general parser.
fn hyphenated_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Indexes into [`FRAMING`] of the lines [`lean_entry`] keeps.
const DIGEST: usize = 3;
const BUILT_AT: usize = 10;
const DEPLOYED_AT: usize = 16;
const EVENT_ID: usize = 20;

/// Which line of [`FRAMING`] `line` is by its indentation and key, and its value for a
/// `Key` line (not yet checked); `None` for a line the writer never writes. The same lines as
/// [`Frame::is`] recognises, found by one dispatch instead of trying each frame in turn (this
/// runs for every line of every entry the delivery metrics read).
fn frame_of(line: &str) -> Option<(usize, Option<&str>)> {
    match line {
        "- image:" => return Some((0, None)),
        "    platform:" => return Some((5, None)),
        "" => return Some((14, None)),
        "  deployment:" => return Some((15, None)),
        _ => {}
    }
    let (deep, rest) = match line.strip_prefix("    ") {
        Some(r) => match r.strip_prefix("  ") {
            Some(r2) => (true, r2),
            None => (false, r),
        },
        None => return None,
    };
    let colon = memchr::memchr(b':', rest.as_bytes())?;
    let value = rest[colon + 1..].strip_prefix(' ')?;
    let j = match (deep, &rest[..colon]) {
        (false, "repo") => 1,
        (false, "tag") => 2,
        (false, "digest") => DIGEST,
        (false, "index_digest") => 4,
        (true, "os") => 6,
        (true, "architecture") => 7,
        (true, "variant") => 8,
        (false, "description") => 9,
        (false, "built_at") => BUILT_AT,
        (false, "revision") => 11,
        (false, "source") => 12,
        (false, "title") => 13,
        (false, "deployed_at") => DEPLOYED_AT,
        (false, "deployed_by") => 17,
        (false, "workspace") => 18,
        (false, "name") => 19,
        (false, "event_id") => EVENT_ID,
        _ => return None,
    };
    Some((j, Some(value)))
}

/// A time as `DateTime<Utc>`'s `FromStr` reads it (as the full reader reads `deployed_at`),
/// with a fast path for the writer's `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_utc(s: &str) -> Option<DateTime<Utc>> {
    writer_time(s).or_else(|| s.parse().ok())
}

/// `s` when it is exactly `YYYY-MM-DDTHH:MM:SSZ` (what the writer and most build tools write)
/// and a valid time: the value every RFC 3339 parser reads, read without one.
pub fn writer_time(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() == 20
        && (b[4], b[7], b[10], b[13], b[16], b[19]) == (b'-', b'-', b'T', b':', b':', b'Z')
    {
        let n = |from: usize, to: usize| {
            b[from..to].iter().try_fold(0u32, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
            })
        };
        if let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) =
            (n(0, 4), n(5, 7), n(8, 10), n(11, 13), n(14, 16), n(17, 19))
            && let Some(t) = chrono::NaiveDate::from_ymd_opt(y as i32, mo, d)
                .and_then(|day| day.and_hms_opt(h, mi, sec))
        {
            return Some(t.and_utc());
        }
    }
    None
}

/// Whether `bytes` (the last entry) is a proper prefix of an entry in the writer's framing
/// without its terminator: what an append cut off by a crash leaves (see the module
/// documentation).
fn cut_off_writer_entry(bytes: &[u8]) -> bool {
    // A cut in the middle of a character leaves an incomplete UTF-8 sequence at the very end.
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&bytes[..e.valid_up_to()]) {
            Ok(t) => t,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    let (complete, partial) = match text.rfind('\n') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => ("", text),
    };
    let mut pos = 0;
    if !text.is_empty() && text.contains('\n') {
        for line in complete.split('\n') {
            // The next frame line this can be: skip the optional ones before it.
            let Some(k) = (pos..FRAMING.len())
                .take_while(|&k| k == pos || FRAMING[k - 1].1)
                .find(|&k| FRAMING[k].0.is(line))
            else {
                return false;
            };
            if k == FRAMING.len() - 1 {
                // The terminator is complete: the entry was written whole.
                return false;
            }
            pos = k + 1;
        }
    }
    partial.is_empty()
        || (pos..FRAMING.len())
            .take_while(|&k| k == pos || FRAMING[k - 1].1)
            .any(|k| FRAMING[k].0.starts(partial))
}

/// Append one whole entry to the locked history file `file` (opened with `O_APPEND`).
/// A torn tail is moved to `<path>.torn` and cut off first; a broken hand-edited last entry
/// refuses the append. Returns the torn tail that was moved, if any. The append is not synced
/// here: the caller syncs the file (or the whole file system, for a batch) before anyone is
/// told the entry is stored.
pub fn append_locked(
    file: &File,
    path: &Path,
    entry: &str,
) -> Result<Option<TornTail>, RecordsError> {
    let h = HistoryFile::new(file, path)?;
    let torn = h.check_tail()?;
    let mut prefix = "";
    if let Some(t) = &torn {
        let bytes = h.read(t.offset, (h.len() - t.offset) as usize)?;
        let torn_path = path.with_extension("yml.torn");
        let mut aside = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&torn_path)
            .map_err(io_err(&torn_path))?;
        let header = format!(
            "# cut from {} line {} on {} (an incomplete entry left by an interrupted append)\n",
            path.display(),
            t.line,
            yaml::time(&Utc::now())
        );
        let mut saved = header.into_bytes();
        saved.extend_from_slice(&bytes);
        saved.extend_from_slice(b"\n\n");
        aside.write_all(&saved).map_err(io_err(&torn_path))?;
        aside.sync_data().map_err(io_err(&torn_path))?;
        // Only the torn bytes go: every complete entry stays byte for byte.
        file.set_len(t.offset).map_err(io_err(path))?;
    } else if h.len() > 0 && h.read(h.len() - 1, 1)? != b"\n" {
        // A whole last entry without its final newline (written by hand): start on a new line.
        prefix = "\n";
    }
    let mut w = file;
    let data = format!("{prefix}{entry}");
    w.write_all(data.as_bytes()).map_err(io_err(path))?;
    Ok(torn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Deployment, DeploymentRecord, ImageRecord, Platform};

    #[test]
    fn the_lean_reader_knows_every_framing_line() {
        for (i, (frame, _)) in FRAMING.iter().enumerate() {
            let line = match *frame {
                Frame::Literal(l) => l.to_string(),
                Frame::Key(indent, key) => format!("{indent}{key}: \"v\""),
            };
            assert!(frame.is(&line), "{line:?}");
            assert_eq!(frame_of(&line).map(|f| f.0), Some(i), "{line:?}");
        }
    }

    #[test]
    fn the_quick_uuid_check_accepts_only_what_the_parser_accepts() {
        for s in [
            "0190d7a0-0000-7000-8000-00000000000a",
            "0190D7A0-0000-7000-8000-00000000000A",
            "0190d7a0-0000-7000-8000-00000000000g",
            "0190d7a0+0000-7000-8000-00000000000a",
            "0190d7a000007000800000000000000a",
            "{0190d7a0-0000-7000-8000-00000000000a}",
            "",
        ] {
            if hyphenated_uuid(s) {
                assert!(s.parse::<uuid::Uuid>().is_ok(), "{s}");
            }
        }
        assert!(hyphenated_uuid("0190d7a0-0000-7000-8000-00000000000a"));
        assert!(!hyphenated_uuid("0190d7a0-0000-7000-8000-00000000000g"));
    }

    /// Whatever the lean reader accepts, the fast reader accepts with the same values.
    fn agree(text: &str) -> bool {
        let Some(l) = lean_entry(text) else {
            return false;
        };
        let f = yaml::fast_history_entry(text)
            .unwrap_or_else(|| panic!("lean accepted what the fast reader refuses: {text:?}"));
        assert_eq!(l.deployed_at, f.deployment.deployed_at, "{text:?}");
        assert_eq!(l.digest, f.image.digest, "{text:?}");
        assert_eq!(l.built_at, f.image.built_at.as_deref(), "{text:?}");
        true
    }

    #[test]
    fn the_lean_reader_reads_only_what_the_fast_reader_reads_the_same() {
        let d = Deployment {
            app: "web".into(),
            image: ImageRecord {
                tag: Some("v1".into()),
                index_digest: Some(format!("sha256:{:064x}", 8)),
                platform: Platform {
                    os: "linux".into(),
                    architecture: "arm64".into(),
                    variant: Some("v8".into()),
                },
                description: Some("quote \" backslash \\ nl \n ünï 🙂: # - x \u{FFFE}".into()),
                built_at: Some("2026-03-01T09:00:00Z".into()),
                revision: Some("abc".into()),
                source: Some("https://example/x".into()),
                title: Some("t".into()),
                ..ImageRecord::new("reg.example/web", format!("sha256:{:064x}", 7))
            },
            deployment: DeploymentRecord {
                name: Some("web".into()),
                ..DeploymentRecord::new("prod", "2026-03-01T10:00:00.5Z".parse().unwrap(), "alice")
            },
        };
        let text = yaml::history_entry(&d);
        assert!(agree(&text), "the writer's own entry");
        // Every prefix: only those with a whole terminator line are read.
        let terminated = text.rfind('"').unwrap() + 1;
        for cut in (0..=text.len()).filter(|&c| text.is_char_boundary(c)) {
            let prefix = &text[..cut];
            assert_eq!(agree(prefix), cut >= terminated, "{prefix:?}");
        }
        // Every line left out, every two neighbouring lines swapped, every line doubled.
        let lines: Vec<&str> = text.lines().collect();
        for i in 0..lines.len() {
            let mut v = lines.clone();
            v.remove(i);
            agree(&(v.join("\n") + "\n"));
            let mut v = lines.clone();
            v.insert(i, lines[i]);
            agree(&(v.join("\n") + "\n"));
            if i + 1 < lines.len() {
                let mut v = lines.clone();
                v.swap(i, i + 1);
                agree(&(v.join("\n") + "\n"));
            }
        }
        // Other shapes are left to the full reader.
        for other in [
            text.replace("    digest: \"", "    digest:  \""),
            text.replace("    built_at: \"", "    built_at: \"\\u0032"),
            text.replace(
                "deployed_at: \"2026-03-01T10:00:00.500Z\"",
                "deployed_at: '2026-03-01T10:00:00.500Z'",
            ),
            text.replace("event_id: \"", "event_id: \"x"),
            text.replace("    revision: \"abc\"", "    revision: \"a\"bc\""),
            text.replace("    title: \"t\"", "    title: \"t\\q\""),
            format!("{text}    # note\n"),
            format!("# note\n{text}"),
            text.replace('\n', "\n\n"),
        ] {
            assert_ne!(other, text);
            assert!(lean_entry(&other).is_none(), "{other:?}");
        }
        // CRLF line ends are read as `str::lines` reads them, like the fast reader.
        assert!(agree(&text.replace('\n', "\r\n")));
        // Without the optional lines.
        let mut bare = d.clone();
        bare.image.tag = None;
        bare.image.index_digest = None;
        bare.image.platform.variant = None;
        bare.image.description = None;
        bare.image.built_at = None;
        bare.image.revision = None;
        bare.image.source = None;
        bare.image.title = None;
        bare.deployment.name = None;
        let bare = yaml::history_entry(&bare);
        assert!(agree(&bare));
        assert_eq!(lean_entry(&bare).unwrap().built_at, None);
    }
}
