//! What the tracking commands print: tables, times, digests, and stored text made safe for a
//! terminal. Records hold whatever a deployer or an API client sent, so every value printed
//! here is treated as hostile:
//!
//! * Control characters (newline, carriage return, tab, ESC, C1...), Unicode format
//!   characters (bidi embeddings, overrides and isolates U+202A–U+202E and U+2066–U+2069,
//!   zero-width characters, the BOM...), line and paragraph separators and noncharacters are
//!   shown escaped (`\n`, `\u{202e}`), so one row of a table is always one record and stored
//!   text cannot reorder or hide what the operator reads ([`crate::terminal::hidden`] holds
//!   these classes).
//! * A table cell is cut to [`CELL_MAX_CHARS`] characters, a value on its own line (`at`,
//!   `compare`) to [`VALUE_MAX_CHARS`], ending in `…` when cut.
//! * Column widths are padded by hand, never with a `{:<width$}` format argument, which panics
//!   above `u16::MAX`.

use std::fmt::Write as _;
use std::io::Write as _;

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};

use crate::terminal::hidden;

/// The most characters of one table cell shown; longer values end in `…`.
pub const CELL_MAX_CHARS: usize = 256;
/// The most characters of one value printed on its own line (`at`, `compare` blocks).
pub const VALUE_MAX_CHARS: usize = 2048;

/// A table cell: escaped ([`escape`]) and cut to [`CELL_MAX_CHARS`].
pub fn cell(text: &str) -> String {
    escape(text, CELL_MAX_CHARS)
}

/// A table cell for an optional value: [`cell`], or `-` when absent.
pub fn cell_or_dash(value: Option<&str>) -> String {
    value.map(cell).unwrap_or_else(|| "-".into())
}

/// A value printed on its own line: escaped and cut to [`VALUE_MAX_CHARS`].
pub fn value(text: &str) -> String {
    escape(text, VALUE_MAX_CHARS)
}

/// `text` with every character that could break a line, move the cursor or reorder the
/// display shown as an escape, cut to `max_chars` characters of output (escapes count) with a
/// final `…` when cut.
pub fn escape(text: &str, max_chars: usize) -> String {
    // Fast path: short printable ASCII, which nearly every stored value is.
    if text.len() <= max_chars && text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return text.to_string();
    }
    let width = |c: char| if hidden(c) { escaped_len(c) } else { 1 };
    // Room for the `…` only when the whole text does not fit.
    let mut total = 0usize;
    let fits = text.chars().all(|c| {
        total += width(c);
        total <= max_chars
    });
    let limit = if fits {
        max_chars
    } else {
        max_chars.saturating_sub(1)
    };
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut count = 0;
    for c in text.chars() {
        let w = width(c);
        if count + w > limit {
            break;
        }
        count += w;
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    if !fits {
        out.push('…');
    }
    out
}

/// The length of `c`'s escape as [`escape`] writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '\n' | '\r' | '\t' => 2,
        // `\u{` + hex digits + `}`
        c => 4 + format!("{:x}", c as u32).len(),
    }
}

/// A time as people read it in the output: RFC 3339 UTC with a `Z`, fractional seconds only
/// when there are any (the same text the records hold).
pub fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parse a point in time: RFC 3339 (`2026-01-25T05:00:00Z`, any offset), or a local time
/// `YYYY-MM-DD HH:MM[:SS]` (also with `T`), a date `YYYY-MM-DD` (local midnight), or
/// `today`/`yesterday` with an optional `HH:MM` ("yesterday 05:00", local).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time_from(s, Local::now().date_naive())
}

/// [`parse_time`] with "today" given, so the relative forms are testable.
pub fn parse_time_from(s: &str, today: NaiveDate) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = |n: NaiveDateTime| {
        Local
            .from_local_datetime(&n)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("{s:?} does not exist in the local time zone (a DST gap)"))
    };
    for f in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return local(n);
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return local(d.and_hms_opt(0, 0, 0).expect("midnight exists"));
    }
    let lower = s.to_ascii_lowercase();
    let (day, rest) = if let Some(r) = lower.strip_prefix("yesterday") {
        (today.pred_opt(), r)
    } else if let Some(r) = lower.strip_prefix("today") {
        (Some(today), r)
    } else {
        (None, "")
    };
    if let Some(day) = day {
        let rest = rest.trim().trim_start_matches("at ").trim();
        let time = if rest.is_empty() {
            Some(chrono::NaiveTime::MIN)
        } else {
            chrono::NaiveTime::parse_from_str(rest, "%H:%M:%S")
                .or_else(|_| chrono::NaiveTime::parse_from_str(rest, "%H:%M"))
                .ok()
        };
        if let Some(time) = time {
            return local(day.and_time(time));
        }
    }
    Err(format!(
        "cannot read the time {s:?}: use RFC 3339 (2026-01-25T05:00:00Z), a local time \
         such as \"2026-01-25 05:00\", or \"yesterday 05:00\""
    ))
}

/// `app in env`, sanitised.
pub fn where_label(env: &str, app: &str) -> String {
    format!("{} in {}", value(app), value(env))
}

/// A digest shortened for a table: the algorithm and the first 12 hex digits.
pub fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, h)) if h.len() > 12 && h.is_ascii() => cell(&format!("{alg}:{}", &h[..12])),
        _ => cell(digest),
    }
}

/// A table: a header and rows of cells already made safe ([`cell`]), columns two spaces apart,
/// the last column unpadded. Written to stdout; a closed pipe ends it quietly.
pub fn print_table<const N: usize>(head: [&str; N], rows: &[[String; N]]) {
    let w = widths(head, rows);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let lines = std::iter::once(row(&w, head.iter().copied()))
        .chain(rows.iter().map(|r| row(&w, r.iter().map(String::as_str))));
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

/// A table printed in two passes over rows that are streamed, not held: [`StreamedTable::measure`]
/// every row first, then print [`StreamedTable::line`] of each again. Same layout as
/// [`print_table`].
pub struct StreamedTable<const N: usize> {
    head: [&'static str; N],
    widths: [usize; N],
}

impl<const N: usize> StreamedTable<N> {
    /// A table with these headings.
    pub fn new(head: [&'static str; N]) -> StreamedTable<N> {
        StreamedTable {
            head,
            widths: head.map(|h| h.chars().count()),
        }
    }

    /// Grow the column widths to fit `cells` (already made safe with [`cell`]).
    pub fn measure(&mut self, cells: &[String; N]) {
        for (w, c) in self.widths.iter_mut().zip(cells) {
            *w = (*w).max(c.chars().count());
        }
    }

    /// The heading line.
    pub fn head_line(&self) -> String {
        row(&self.widths, self.head.iter().copied())
    }

    /// One row's line.
    pub fn line(&self, cells: &[String; N]) -> String {
        row(&self.widths, cells.iter().map(String::as_str))
    }
}

/// Write `line` and a newline to `out`; a closed pipe is the reader's choice, not an error.
pub fn write_line(out: &mut impl std::io::Write, line: &str) -> anyhow::Result<()> {
    match writeln!(out, "{line}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Print a JSON array on stdout as [`print_json`] would print a `Vec`, one element at a time,
/// so a long list is never held: `items` calls its argument on each element.
pub fn print_json_stream<T: serde::Serialize, R: Default>(
    items: impl FnOnce(&mut dyn FnMut(&T) -> anyhow::Result<()>) -> anyhow::Result<R>,
) -> anyhow::Result<R> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut n = 0usize;
    let mut write = |out: &mut std::io::BufWriter<std::io::StdoutLock<'_>>, v: &T| {
        let text = serde_json::to_string_pretty(v)?;
        out.write_all(if n == 0 { b"[\n" } else { b",\n" })?;
        for (k, l) in text.lines().enumerate() {
            if k > 0 {
                out.write_all(b"\n")?;
            }
            out.write_all(b"  ")?;
            out.write_all(l.as_bytes())?;
        }
        n += 1;
        anyhow::Ok(())
    };
    let result = items(&mut |v| write(&mut out, v)).and_then(|r| {
        out.write_all(if n == 0 { b"[]\n" } else { b"\n]\n" })?;
        out.flush()?;
        Ok(r)
    });
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            // The reader went away: nothing more to say to it.
            Ok(R::default())
        }
        r => r,
    }
}

/// The lines [`print_table`] prints.
pub fn table_lines<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> Vec<String> {
    let w = widths(head, rows);
    std::iter::once(row(&w, head.iter().copied()))
        .chain(rows.iter().map(|r| row(&w, r.iter().map(String::as_str))))
        .collect()
}

/// Each column's width in characters: its widest cell or heading.
fn widths<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> [usize; N] {
    let mut w = [0usize; N];
    for (i, h) in head.iter().enumerate() {
        w[i] = h.chars().count();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    w
}

/// One line of a table with columns `w` wide.
fn row<'a>(w: &[usize], cells: impl Iterator<Item = &'a str>) -> String {
    let mut s = String::new();
    for (i, c) in cells.enumerate() {
        s.push_str(c);
        if i + 1 < w.len() {
            pad(&mut s, w[i].saturating_sub(c.chars().count()) + 2);
        }
    }
    s.truncate(s.trim_end().len());
    s
}

/// `text` padded with spaces to `width` characters (by hand: see the module notes).
pub fn padded(text: &str, width: usize) -> String {
    let mut s = text.to_string();
    pad(&mut s, width.saturating_sub(text.chars().count()));
    s
}

fn pad(s: &mut String, n: usize) {
    s.extend(std::iter::repeat_n(' ', n));
}

/// Print `v` as pretty JSON on stdout (a closed pipe is the reader's choice, not an error).
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_line_breaks_controls_and_bidi() {
        assert_eq!(cell("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(
            cell("x\u{202e}y\u{2066}z\u{200b}"),
            "x\\u{202e}y\\u{2066}z\\u{200b}"
        );
        assert_eq!(cell("\u{1b}[31m"), "\\u{1b}[31m");
        assert_eq!(cell("\u{fffe}\u{2028}"), "\\u{fffe}\\u{2028}");
        assert_eq!(cell("héllo ✓"), "héllo ✓");
    }

    #[test]
    fn cuts_long_cells_with_an_ellipsis() {
        let long = "x".repeat(70_000);
        let c = cell(&long);
        assert_eq!(c.chars().count(), CELL_MAX_CHARS);
        assert!(c.ends_with('…'));
        assert_eq!(
            cell(&"x".repeat(CELL_MAX_CHARS - 1)).chars().count(),
            CELL_MAX_CHARS - 1
        );
        // An escape is never split by the cut.
        let c = cell(&"\n".repeat(1000));
        assert!(c.ends_with("\\n…"), "{c}");
    }

    #[test]
    fn tables_pad_by_hand_at_any_width() {
        let wide = "y".repeat(70_000);
        let lines = table_lines(
            ["A", "B"],
            &[[wide.clone(), "z".into()], ["a".into(), "b".into()]],
        );
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1], format!("{wide}  z"));
        assert_eq!(lines[2], format!("a{}b", " ".repeat(70_001)));
    }

    #[test]
    fn short_digests() {
        let d = format!("sha512:{}", "a".repeat(128));
        assert_eq!(short_digest(&d), "sha512:aaaaaaaaaaaa");
        assert_eq!(short_digest("odd"), "odd");
    }

    #[test]
    fn reads_absolute_local_and_relative_times() {
        let today = NaiveDate::from_ymd_opt(2026, 1, 26).unwrap();
        let local = |y, m, d, h, mi| {
            Local
                .from_local_datetime(
                    &NaiveDate::from_ymd_opt(y, m, d)
                        .unwrap()
                        .and_hms_opt(h, mi, 0)
                        .unwrap(),
                )
                .earliest()
                .unwrap()
                .with_timezone(&Utc)
        };
        assert_eq!(
            parse_time_from("2026-01-25T05:00:00+01:00", today).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 25, 4, 0, 0).unwrap()
        );
        for (text, want) in [
            ("2026-01-25 05:00", local(2026, 1, 25, 5, 0)),
            ("yesterday 05:00", local(2026, 1, 25, 5, 0)),
            ("Yesterday at 05:00", local(2026, 1, 25, 5, 0)),
            ("today", local(2026, 1, 26, 0, 0)),
            ("2026-01-25", local(2026, 1, 25, 0, 0)),
        ] {
            assert_eq!(parse_time_from(text, today).unwrap(), want, "{text}");
        }
        let err = parse_time_from("last tuesday", today).unwrap_err();
        assert!(err.contains("\"yesterday 05:00\""), "{err}");
        assert!(parse_time_from("yesterday 25:00", today).is_err());
    }
}
