//! What `atomic` (projectatomic/atomic v1.22, `Atomic/scan.py`, `Atomic/install.py`) does
//! around a scanner image, re-done in Rust so tests can run it without atomic itself:
//! loading `/etc/atomic.d`, `atomic install`'s INSTALL label command, and `atomic scan`'s
//! `docker run` line (reference `atomic-scan-protocol.md` §1.1, §1.5, §1.6, §1.12).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// A scanner definition as atomic reads it from `/etc/atomic.d/<file>`: every key atomic uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ScannerConfig {
    /// Must be `scanner`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `--scanner` name and the results directory name.
    pub scanner_name: String,
    /// The image `docker run` starts.
    pub image_name: String,
    /// The scan used when `--scan_type` is not given; must be one of `scans`.
    pub default_scan: String,
    /// docker-run arguments put before the image name, after `$VAR` expansion.
    pub custom_args: Option<Vec<String>>,
    /// The scan types.
    pub scans: Vec<ScanEntry>,
}

/// One `scans` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct ScanEntry {
    /// `--scan_type` value.
    pub name: String,
    /// The command run in the image.
    pub args: Vec<String>,
    /// What `atomic scan --list` prints.
    pub description: String,
}

impl ScannerConfig {
    /// Parse a config file's text.
    pub fn parse(text: &str) -> ScannerConfig {
        serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("scanner config is not valid: {e}"))
    }

    /// `get_scan_type()`: the default must be a scan even when `--scan_type` is given
    /// (atomic checks it first), then the requested (or default) scan is looked up.
    pub fn scan(&self, scan_type: Option<&str>) -> &ScanEntry {
        assert!(
            self.scans.iter().any(|s| s.name == self.default_scan),
            "The default scan type '{}' is not defined as a valid scan type for the scanner '{}'",
            self.default_scan,
            self.scanner_name
        );
        let wanted = scan_type.unwrap_or(&self.default_scan);
        self.scans
            .iter()
            .find(|s| s.name == wanted)
            .unwrap_or_else(|| {
                panic!(
                    "Unable to find the scan type '{wanted}' for '{}'.",
                    self.scanner_name
                )
            })
    }
}

/// `util.get_scanners()`: every regular file directly in `dir` that parses to a mapping
/// with `type: scanner`.
pub fn load_scanners(dir: &Path) -> Vec<ScannerConfig> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let value: serde_json::Value = match serde_saphyr::from_str(&text) {
            Ok(v) => v,
            Err(e) => panic!(
                "Error: Unable to load scannerfile {}: {e}",
                entry.path().display()
            ),
        };
        if value.get("type").and_then(|t| t.as_str()) == Some("scanner") {
            found.push(ScannerConfig::parse(&text));
        }
    }
    found
}

/// `Atomic.sub_env_strings`: expand `$x`/`${x}` from `env` (atomic's `cmd_env()`), delete
/// every `$...` left (so an unset variable becomes empty), collapse whitespace.
pub fn sub_env_strings(input: &str, env: &BTreeMap<String, String>) -> String {
    // Step 1, util.expandvars: regex \$(\w+|\{[^}]*\}); unknown names stay as they are.
    let chars: Vec<char> = input.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' {
            let (name, end) = if chars.get(i + 1) == Some(&'{') {
                match chars[i + 2..].iter().position(|&c| c == '}') {
                    Some(p) => (
                        chars[i + 2..i + 2 + p].iter().collect::<String>(),
                        i + 3 + p,
                    ),
                    None => (String::new(), i + 1),
                }
            } else {
                let len = chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_alphanumeric() || **c == '_')
                    .count();
                (chars[i + 1..i + 1 + len].iter().collect(), i + 1 + len)
            };
            if !name.is_empty()
                && let Some(value) = env.get(&name)
            {
                out.push_str(value);
                i = end;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    // Step 2, re.sub(r'\$\{?\S*\}?', ''): any `$` left takes the rest of its word with it.
    let mut cleaned = String::new();
    let mut skipping = false;
    for c in out.chars() {
        if c == '$' {
            skipping = true;
        } else if c.is_whitespace() {
            skipping = false;
        }
        if !skipping {
            cleaned.push(c);
        }
    }
    // Step 3: " ".join(s.split()).
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `shlex.split` (POSIX mode), which `util.check_call` applies to the command string.
pub fn shlex_split(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                if !matches!(n, '"' | '\\' | '$' | '`') {
                                    word.push('\\');
                                }
                                word.push(n);
                            }
                        }
                        _ => word.push(q),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// `Image.get_label`: atomic looks the INSTALL label up as given, lower-case, capitalised,
/// then upper-case.
pub fn install_label(labels: &BTreeMap<String, String>) -> Option<String> {
    let name = "INSTALL";
    let mut capitalized = name.to_lowercase();
    capitalized.replace_range(0..1, &name[0..1]);
    [
        name.to_string(),
        name.to_lowercase(),
        capitalized,
        name.to_uppercase(),
    ]
    .iter()
    .find_map(|k| labels.get(k).cloned())
}

/// The argv `atomic install IMAGE` runs for an INSTALL label: `gen_cmd` replaces the bare
/// tokens `IMAGE`/`NAME`, then `sub_env_strings` expands `$IMAGE` (the image as typed) and
/// `$NAME` (its base name without tag).
pub fn install_argv(label: &str, image: &str) -> Vec<String> {
    let name = image
        .rsplit('/')
        .next()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    let tokens: Vec<String> = label
        .split_whitespace()
        .map(|t| match t {
            "IMAGE" => image.to_string(),
            "NAME" => name.clone(),
            "IMAGE=IMAGE" => format!("IMAGE={image}"),
            "NAME=NAME" => format!("NAME={name}"),
            other => other.to_string(),
        })
        .collect();
    let env = BTreeMap::from([
        ("IMAGE".to_string(), image.to_string()),
        ("NAME".to_string(), name),
    ]);
    shlex_split(&sub_env_strings(&tokens.join(" "), &env))
}

/// The argv `atomic scan` runs (§1.5): `docker run -t --rm -v /etc/localtime:/etc/localtime
/// -v <chroot_dir>:/scanin -v <results_dir>:/scanout:rw,Z <custom_args> <image> <args>`,
/// with `$VAR`s expanded from `env` and the whole line re-split as atomic does.
/// `extra` goes after the custom args (before the image): what a test needs on top.
pub fn scan_argv(
    config: &ScannerConfig,
    scan_type: Option<&str>,
    chroot_dir: &Path,
    results_dir: &Path,
    env: &BTreeMap<String, String>,
    extra: &[&str],
) -> Vec<String> {
    let scan = config.scan(scan_type);
    let mut cmd: Vec<String> = [
        "docker",
        "run",
        "-t",
        "--rm",
        "-v",
        "/etc/localtime:/etc/localtime",
        "-v",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cmd.push(format!("{}:/scanin", chroot_dir.display()));
    cmd.push("-v".into());
    cmd.push(format!("{}:/scanout:rw,Z", results_dir.display()));
    cmd.extend(config.custom_args.clone().unwrap_or_default());
    cmd.extend(extra.iter().map(|s| s.to_string()));
    cmd.push(config.image_name.clone());
    cmd.extend(scan.args.clone());
    // cmd_env() overrides IMAGE and NAME with empty strings for `scan`.
    let mut env = env.clone();
    env.insert("IMAGE".into(), String::new());
    env.insert("NAME".into(), String::new());
    shlex_split(&sub_env_strings(&cmd.join(" "), &env))
}

/// A JSON value with object keys in file order: atomic 1.22 on Python 3 loads `json` with
/// `json.load`, whose dicts keep the file's order, and prints them in that order.
#[derive(Debug, Clone)]
pub enum Ordered {
    /// An object, keys in file order.
    Object(Vec<(String, Ordered)>),
    /// A list.
    List(Vec<Ordered>),
    /// A scalar, as Python's `str()` prints it (`True`, `None`, `3`, the string itself).
    Scalar(String),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(if v { "True" } else { "False" }.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(v.to_string()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
                Ok(Ordered::Scalar(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Scalar("None".into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Ordered, A::Error> {
                let mut items = vec![];
                while let Some(x) = a.next_element()? {
                    items.push(x);
                }
                Ok(Ordered::List(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Ordered, A::Error> {
                let mut items = vec![];
                while let Some((k, v)) = a.next_entry::<String, Ordered>()? {
                    items.push((k, v));
                }
                Ok(Ordered::Object(items))
            }
        }
        d.deserialize_any(V)
    }
}

impl Ordered {
    fn get(&self, key: &str) -> Option<&Ordered> {
        match self {
            Ordered::Object(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn is_nonempty_list(&self) -> bool {
        matches!(self, Ordered::List(l) if !l.is_empty())
    }
}

/// `_output_custom(value, indent)` of `Atomic/scan.py`: a dict prints `key: value`, or `key:`
/// and its children at indent + 2 for a dict or a list; a list prints its items; anything else
/// prints itself. Each `util.write_out` is one line.
fn output_custom(value: &Ordered, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Ordered::Object(items) => {
            for (k, v) in items {
                match v {
                    Ordered::Object(_) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        output_custom(v, indent + 2, out);
                    }
                    Ordered::List(l) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        for z in l {
                            output_custom(z, indent + 2, out);
                        }
                    }
                    Ordered::Scalar(s) => out.push_str(&format!("{pad}{k}: {s}\n")),
                }
            }
        }
        Ordered::List(l) => {
            for x in l {
                output_custom(x, indent, out);
            }
        }
        Ordered::Scalar(s) => out.push_str(&format!("{pad}{s}\n")),
    }
}

/// What `atomic scan` prints for one target's `json` (`output_results` in `Atomic/scan.py`),
/// `name1` being the target as typed and `name2` its short id or tags: for `Successful`
/// "true" the `Custom` block at indent 3, then each `Results` entry's `Custom` at indent 7
/// (or "passed the scan"); for anything else only "<name1> is not supported for this scan.".
pub fn output_results(json_text: &str, name1: &str, name2: &str) -> String {
    let doc: Ordered = serde_json::from_str(json_text).expect("atomic's json.load");
    let successful = match doc.get("Successful") {
        Some(Ordered::Scalar(s)) => s.to_uppercase() == "TRUE",
        other => panic!("'Successful' must be a string, got {other:?}"),
    };
    let mut out = format!("\n{name1} ({name2})\n\n");
    if !successful {
        out.push_str(&format!("     {name1} is not supported for this scan.\n"));
        return out;
    }
    if let Some(custom) = doc.get("Custom") {
        output_custom(custom, 3, &mut out);
        out.push('\n');
    }
    match (doc.get("Vulnerabilities"), doc.get("Results")) {
        (Some(v), _) if v.is_nonempty_list() => panic!("this scanner writes no Vulnerabilities"),
        (_, Some(Ordered::List(results))) if !results.is_empty() => {
            out.push_str("The following results were found:\n\n");
            for r in results {
                if let Some(custom) = r.get("Custom") {
                    output_custom(custom, 7, &mut out);
                    out.push('\n');
                }
            }
        }
        _ => out.push_str(&format!("{name1} passed the scan\n")),
    }
    out
}
