//! A small HTML writer in which stored text cannot become markup: [`Html::text`] and
//! [`Html::attr`] escape everything they are given, and [`Html::raw`] takes only `&'static
//! str`, so a string read from the records (a `deployed_by` of `<script>…`) has no way into
//! the page except escaped. This is why the pages are Rust functions over this writer rather
//! than a template crate: the escaping rule is enforced by the types, with no extra build step
//! or proc-macro to compile.

use std::fmt::Write as _;

/// A page or fragment being written.
#[derive(Debug, Default)]
pub struct Html {
    out: String,
}

/// Escape `s` for HTML text and double-quoted attribute values. Control characters other than
/// tab and newline, format characters (bidi overrides, zero-width characters…) and
/// noncharacters ([`crate::terminal::hidden`], the one definition the terminal output uses
/// too) are shown as `\u{..}`, so stored text cannot reorder or hide what is around it.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            c if crate::terminal::hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Percent-encode a query-string value.
pub fn q(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Html {
    /// An empty writer.
    pub fn new() -> Html {
        Html::default()
    }

    /// Literal markup: only compile-time strings.
    pub fn raw(&mut self, s: &'static str) -> &mut Html {
        self.out.push_str(s);
        self
    }

    /// Text, escaped.
    pub fn text(&mut self, s: &str) -> &mut Html {
        escape_into(&mut self.out, s);
        self
    }

    /// A number or other `Display` value, escaped.
    pub fn show(&mut self, v: impl std::fmt::Display) -> &mut Html {
        let s = v.to_string();
        self.text(&s)
    }

    /// ` name="value"` with the value escaped (`name` is a compile-time string).
    pub fn attr(&mut self, name: &'static str, value: &str) -> &mut Html {
        self.out.push(' ');
        self.out.push_str(name);
        self.out.push_str("=\"");
        escape_into(&mut self.out, value);
        self.out.push('"');
        self
    }

    /// `<tag>text</tag>` with the text escaped.
    pub fn el(&mut self, tag: &'static str, text: &str) -> &mut Html {
        self.out.push('<');
        self.out.push_str(tag);
        self.out.push('>');
        self.text(text);
        self.out.push_str("</");
        self.out.push_str(tag);
        self.out.push('>');
        self
    }

    /// `<a href="...">text</a>`, both escaped.
    pub fn link(&mut self, href: &str, text: &str) -> &mut Html {
        self.raw("<a")
            .attr("href", href)
            .raw(">")
            .text(text)
            .raw("</a>")
    }

    /// Append another fragment (itself written through this type, so already safe).
    pub fn push(&mut self, other: Html) -> &mut Html {
        self.out.push_str(&other.out);
        self
    }

    /// The markup.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The stylesheet, embedded: light and dark from `prefers-color-scheme`; every state that
/// colour shows is also written as text or a symbol.
pub const CSS: &str = r#"
:root { --bg: #fff; --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --accent: #0550ae;
  --warn-bg: #fff8c5; --bad: #a40e26; --head: #f6f8fa; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --line: #30363d; --accent: #4493f8;
    --warn-bg: #3b2e00; --bad: #ff7b72; --head: #161b22; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; background: var(--bg); color: var(--fg); }
header { display: flex; gap: 1.2em; align-items: center; padding: .6em 1.2em;
  border-bottom: 1px solid var(--line); background: var(--head); flex-wrap: wrap; }
header strong { font-size: 1.1em; }
nav a { margin-right: 1em; }
main { padding: 1em 1.2em; }
a { color: var(--accent); }
code, .mono { font-family: ui-monospace, monospace; font-size: .92em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; }
th, td { border: 1px solid var(--line); padding: .35em .6em; text-align: left; vertical-align: top; }
thead th { background: var(--head); }
td.cell div { white-space: nowrap; }
.muted { color: var(--muted); }
.drift { background: var(--warn-bg); }
.bad { color: var(--bad); font-weight: 600; }
form { margin: .4em 0 1em; }
input, select, button { font: inherit; padding: .2em .4em; color: var(--fg); background: var(--bg);
  border: 1px solid var(--line); border-radius: 4px; }
svg { max-width: 100%; height: auto; color: var(--fg); }
svg .lane { stroke: var(--line); }
svg text { fill: currentColor; font-size: 12px; }
svg .pt { fill: var(--accent); }
svg .rb { fill: var(--bad); }
svg .bar { fill: var(--accent); }
svg .bar.rb { fill: var(--bad); }
.charts { display: flex; gap: 1.5em; flex-wrap: wrap; }
.pager a, .pager span { margin-right: 1em; }
"#;

/// The navigation entries: path and label.
const NAV: [(&str, &str); 4] = [
    ("/", "Environments × apps"),
    ("/search", "Where does it run"),
    ("/delivery", "Delivery"),
    ("/scans", "Scans"),
];

/// A whole page around `body`.
pub fn page(title: &str, body: Html) -> String {
    let mut h = Html::new();
    h.raw("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw("<meta name=\"color-scheme\" content=\"light dark\">")
        .raw("<title>")
        .text(title)
        .raw(" · imagetrail</title><link rel=\"stylesheet\" href=\"/assets/dashboard.css\">")
        .raw("</head><body><header><strong>imagetrail</strong><nav>");
    for (href, label) in NAV {
        h.link(href, label);
    }
    h.raw("</nav></header><main><h1>")
        .text(title)
        .raw("</h1>")
        .push(body)
        .raw("</main></body></html>\n");
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_cannot_become_markup() {
        let mut h = Html::new();
        h.el("td", "<script>alert(1)</script>")
            .raw("<a")
            .attr("title", "\" onmouseover=\"x")
            .raw(">")
            .text("a\u{202E}b\u{1}c\u{FFFE}");
        assert_eq!(
            h.finish(),
            "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td><a title=\"&quot; onmouseover=&quot;x\">a\\u{202e}b\\u{1}c\\u{fffe}"
        );
    }

    #[test]
    fn invisible_characters_are_shown_as_the_terminal_shows_them() {
        // Zero-width space, soft hyphen, tag, noncharacter; tab and newline stay.
        let mut h = Html::new();
        h.text("a\u{200B}b\u{AD}c\u{E0041}d\u{FDD0}\te\n");
        assert_eq!(h.finish(), "a\\u{200b}b\\u{ad}c\\u{e0041}d\\u{fdd0}\te\n");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(q("team/app & x"), "team%2Fapp+%26+x");
    }
}
