//! Every numeric flag, given on the command line or through its `IMAGETRAIL_*` variable, with
//! hostile values: each is a usage error (exit 2) that names the flag, never a panic (101).

use crate::support::{imagetrail, run, stderr};

/// Values no numeric flag may take. `0` is listed separately: it is valid for some flags.
const HOSTILE: &[&str] = &[
    "nan",
    "NaN",
    "inf",
    "-inf",
    "-1",
    "1e400",
    "99999999999999999999",
    "",
    "abc",
    " ",
    "1\u{202e}0",
];

/// (the command before the flag, the flag, its variable, whether 0 is a valid value).
fn flags(state: &str) -> Vec<(Vec<String>, &'static str, &'static str, bool)> {
    let serve = vec![
        "serve".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--state-dir".into(),
        state.into(),
    ];
    let scan = vec![
        "scan".to_string(),
        "--scanin".into(),
        format!("{state}/in"),
        "--scanout".into(),
        format!("{state}/out"),
    ];
    let register = vec!["register".to_string(), "no-such-image".into()];
    let prune = vec![
        "registry".to_string(),
        "prune".into(),
        "127.0.0.1:1/x".into(),
        "--state-dir".into(),
        state.into(),
    ];
    let mut out = vec![
        (
            serve.clone(),
            "--request-timeout",
            "IMAGETRAIL_REQUEST_TIMEOUT",
            false,
        ),
        (
            serve.clone(),
            "--max-body-bytes",
            "IMAGETRAIL_MAX_BODY_BYTES",
            false,
        ),
        (
            serve.clone(),
            "--max-connections",
            "IMAGETRAIL_MAX_CONNECTIONS",
            false,
        ),
        (
            serve.clone(),
            "--max-pending-body-bytes",
            "IMAGETRAIL_MAX_PENDING_BODY_BYTES",
            false,
        ),
        (
            serve,
            "--points-cache-mib",
            "IMAGETRAIL_POINTS_CACHE_MIB",
            true,
        ),
        (prune, "--keep", "", true),
    ];
    for cmd in [scan, register] {
        out.push((
            cmd.clone(),
            "--connect-timeout",
            "IMAGETRAIL_CONNECT_TIMEOUT",
            false,
        ));
        out.push((cmd.clone(), "--timeout", "IMAGETRAIL_TIMEOUT", false));
        out.push((cmd.clone(), "--attempts", "IMAGETRAIL_ATTEMPTS", false));
        out.push((
            cmd.clone(),
            "--concurrency",
            "IMAGETRAIL_CONCURRENCY",
            false,
        ));
        out.push((cmd, "--exit-code", "IMAGETRAIL_EXIT_CODE", true));
    }
    out
}

fn assert_usage_error(out: &std::process::Output, flag: &str, value: &str) {
    let err = stderr(out);
    assert_ne!(
        out.status.code(),
        Some(101),
        "{flag} {value:?} panicked: {err}"
    );
    assert_eq!(out.status.code(), Some(2), "{flag} {value:?}: {err}");
    assert!(
        err.contains(flag),
        "the error for {flag} {value:?} does not name the flag: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn hostile_numeric_flags_are_usage_errors_that_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap().to_string();
    for (cmd, flag, var, zero_ok) in flags(&state) {
        let values = HOSTILE
            .iter()
            .copied()
            .chain((!zero_ok).then_some("0"))
            .collect::<Vec<_>>();
        for value in values {
            let out = run(imagetrail().args(&cmd).arg(format!("{flag}={value}")));
            assert_usage_error(&out, flag, value);
            // clap treats an empty variable as not given, so only the others go through it.
            if !var.is_empty() && !value.trim().is_empty() {
                let out = run(imagetrail().args(&cmd).env(var, value));
                assert_usage_error(&out, flag, value);
            }
        }
    }
}
