//! The `imagetrail` binary: parse the command line, set up logging on stderr,
//! hand the work to the library and turn the outcome into an exit code.

use clap::Parser;
use imagetrail::cli::Cli;
use imagetrail::exit::ExitCode;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    imagetrail::logging::init_with_color(
        cli.global.verbose,
        cli.global.quiet,
        cli.global.color,
        matches!(cli.command, imagetrail::cli::Command::Scan(_)),
    );
    match imagetrail::run(cli) {
        Ok(code) => code.into(),
        Err(err) => {
            // `{:#}` prints the whole anyhow context chain on one line.
            eprintln!("imagetrail: error: {err:#}");
            ExitCode::from_error(&err).into()
        }
    }
}
