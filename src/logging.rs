//! Logging: always to stderr (stdout carries results and the per-target status lines).
//!
//! Colour follows the `NO_COLOR` convention (<https://no-color.org>) and is off by default for
//! `scan`: atomic runs the scanner with `docker run -t`, so its stderr is a terminal although
//! the log usually ends up collected as text. `--color always|never` decides outright.

use tracing_subscriber::EnvFilter;

use crate::cli::ColorChoice;

/// Install the global subscriber with automatic colour (see [`init_with_color`]).
pub fn init(verbose: u8, quiet: bool) {
    init_with_color(verbose, quiet, ColorChoice::Auto, false);
}

/// Whether the log carries ANSI colour: `always`/`never` decide; `auto` means a terminal,
/// unless `NO_COLOR` is set to a non-empty value or the command is `scan`.
pub fn use_color(choice: ColorChoice, no_color: Option<&str>, as_scan: bool, tty: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => tty && !as_scan && no_color.is_none_or(str::is_empty),
    }
}

/// Install the global subscriber. `RUST_LOG` wins over `-v`/`-q`; `as_scan` is true for the
/// `scan` command (the container under atomic).
pub fn init_with_color(verbose: u8, quiet: bool, color: ColorChoice, as_scan: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "imagetrail={default},{}",
            if verbose > 2 { "debug" } else { "warn" }
        ))
    });
    let ansi = use_color(
        color,
        std::env::var("NO_COLOR").ok().as_deref(),
        as_scan,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_rules() {
        use ColorChoice::*;
        assert!(use_color(Auto, None, false, true));
        assert!(!use_color(Auto, None, false, false), "not a terminal");
        assert!(!use_color(Auto, Some("1"), false, true), "NO_COLOR");
        assert!(
            use_color(Auto, Some(""), false, true),
            "an empty NO_COLOR is unset"
        );
        assert!(!use_color(Auto, None, true, true), "scan: plain by default");
        assert!(use_color(Always, Some("1"), true, false), "asked for");
        assert!(!use_color(Never, None, false, true));
    }
}
