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
