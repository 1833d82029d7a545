//! Delivery metrics over the deployment records, per environment and time window: deployment
//! frequency, lead time from build to deploy, rollback rate and time to restore. The
//! definitions are in the README ("Delivery metrics"); [`compute`] is a pure function over
//! histories, [`collect`] reads just the entries it needs from a [`Store`], and of each only
//! what the metrics use ([`DeliveryPoint`]: deployed at, digest, built at).
//!
//! A rollback is what `imagetrail compare` calls one: a deployment of a digest that ran
//! earlier in the same environment and app, other than the one running just before it (a
//! redeploy of what runs is not a rollback). An image cannot have run before it was built, so
//! only the entries deployed since the oldest `built_at` in the window need to be read to
//! decide it; entries without `built_at` are checked with a reverse search of their history.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;

use crate::records::{
    DeliveryPoint, DeliveryPoints, DigestId, Digests, HistoryReader, RecordStore, RecordsError,
};

/// One app's history in one environment, as [`compute`] needs it.
#[derive(Debug, Clone, Default)]
pub struct AppHistory {
    /// The environment.
    pub env: String,
    /// The app.
    pub app: String,
    /// Entries oldest first: those in the window and any before it that [`compute`] needs
    /// (from the oldest `built_at` in the window on, and the one just before those).
    pub entries: Vec<DeliveryPoint>,
    /// The digests the entries name.
    pub digests: Digests,
    /// Digests known to have run in this environment and app before `entries[0]`.
    pub earlier_digests: HashSet<DigestId>,
}

impl AppHistory {
    /// An app's history from whole deployments, oldest first (tests, and stores that hold
    /// whole records).
    pub fn from_deployments<'a>(
        env: &str,
        app: &str,
        entries: impl IntoIterator<Item = &'a crate::records::Deployment>,
    ) -> AppHistory {
        let mut points = DeliveryPoints::default();
        for d in entries {
            points.push_deployment(d, 0);
        }
        AppHistory {
            env: env.into(),
            app: app.into(),
            entries: points.points,
            digests: points.digests,
            earlier_digests: HashSet::new(),
        }
    }

    /// Record that `digest` ran before the entries.
    pub fn ran_earlier(&mut self, digest: &str) {
        let id = self.digests.intern(digest);
        self.earlier_digests.insert(id);
    }
}

/// The time window `[since, until]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Start (inclusive).
    pub since: DateTime<Utc>,
    /// End (inclusive).
    pub until: DateTime<Utc>,
}

impl Window {
    /// Its length in days (at least one second, so rates stay finite).
    pub fn days(&self) -> f64 {
        (self.until - self.since).num_seconds().max(1) as f64 / 86_400.0
    }

    fn contains(&self, t: DateTime<Utc>) -> bool {
        self.since <= t && t <= self.until
    }
}

/// Percentiles of a list of durations, in seconds (nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    /// How many values.
    pub count: usize,
    /// The median (nearest rank), seconds.
    pub p50_seconds: Option<i64>,
    /// The 90th percentile (nearest rank), seconds.
    pub p90_seconds: Option<i64>,
}

impl Spread {
    /// Nearest-rank percentiles of `values` (sorted here).
    pub fn of(mut values: Vec<i64>) -> Spread {
        values.sort_unstable();
        Spread {
            count: values.len(),
            p50_seconds: percentile(&values, 50),
            p90_seconds: percentile(&values, 90),
        }
    }
}

/// The nearest-rank `p`th percentile of sorted `values`: the value at 1-based rank
/// ceil(p/100 × n).
pub fn percentile(sorted: &[i64], p: u32) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (u64::from(p) * n as u64).div_ceil(100).max(1) as usize;
    sorted.get(rank.min(n) - 1).copied()
}

/// One day of an environment's deployments, for charts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// The UTC date.
    pub date: NaiveDate,
    /// Deployments that day.
    pub deployments: usize,
    /// Rollbacks that day.
    pub rollbacks: usize,
    /// Median lead time of that day's deployments, seconds.
    pub lead_time_p50_seconds: Option<i64>,
}

/// The metrics of one environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvMetrics {
    /// The environment.
    pub environment: String,
    /// Deployments in the window (every app).
    pub deployments: usize,
    /// Apps with at least one deployment in the window.
    pub apps: usize,
    /// Deployments per day.
    pub per_day: f64,
    /// Deployments per week.
    pub per_week: f64,
    /// Lead time from build (`built_at`) to deployment.
    pub lead_time: Spread,
    /// Deployments in the window without a readable `built_at` (left out of the lead time).
    pub without_built_at: usize,
    /// Rollbacks in the window.
    pub rollbacks: usize,
    /// rollbacks / deployments (`None` without deployments).
    pub rollback_rate: Option<f64>,
    /// Time to restore: how long the version a rollback replaced had run.
    pub time_to_restore: Spread,
    /// Per UTC day of the window.
    pub days: Vec<Day>,
}

/// The metrics of every environment over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The window.
    pub window: Window,
    /// Per environment, sorted by name.
    pub environments: Vec<EnvMetrics>,
}

/// Whether each entry of `h` is a rollback, and for a rollback the time the replaced
/// deployment ran before it.
pub fn rollbacks(h: &AppHistory) -> Vec<Option<Duration>> {
    // Digests are dense ids of the history's table: "ran before" is one flag each.
    let mut seen = vec![false; h.digests.len()];
    for id in &h.earlier_digests {
        if let Some(s) = seen.get_mut(id.index()) {
            *s = true;
        }
    }
    let mut out = Vec::with_capacity(h.entries.len());
    let mut prev: Option<&DeliveryPoint> = None;
    for d in &h.entries {
        let redeploy = prev.is_some_and(|p| p.digest == d.digest);
        let ran = seen.get(d.digest.index()).copied().unwrap_or(false);
        out.push(if !redeploy && ran {
            Some(
                prev.map(|p| d.deployed_at - p.deployed_at)
                    .unwrap_or_default(),
            )
        } else {
            None
        });
        if let Some(s) = seen.get_mut(d.digest.index()) {
            *s = true;
        }
        prev = Some(d);
    }
    out
}

/// Lead time of one deployment in seconds: deployed_at − built_at, clamped at 0 (a build
/// clock ahead of the deployer's); `None` without a readable RFC 3339 `built_at`.
pub fn lead_time(d: &DeliveryPoint) -> Option<i64> {
    Some((d.deployed_at - d.built_at?).num_seconds().max(0))
}

/// The metrics of `histories` over `window`, per environment.
pub fn compute(histories: &[AppHistory], window: Window) -> Report {
    #[derive(Default)]
    struct Acc {
        deployments: usize,
        apps: usize,
        leads: Vec<i64>,
        without_built_at: usize,
        restores: Vec<i64>,
        /// Per UTC day of the window, from its first: deployments, rollbacks, lead times.
        days: Vec<(usize, usize, Vec<i64>)>,
    }
    let first_day = window.since.date_naive();
    let day_count = (window.until.date_naive() - first_day).num_days().max(0) as usize + 1;
    let mut per_env: BTreeMap<&str, Acc> = BTreeMap::new();
    for h in histories {
        let acc = per_env.entry(h.env.as_str()).or_default();
        if acc.days.is_empty() {
            acc.days.resize_with(day_count, Default::default);
        }
        let marks = rollbacks(h);
        let mut any = false;
        for (d, rb) in h.entries.iter().zip(marks) {
            let t = d.deployed_at;
            if !window.contains(t) {
                continue;
            }
            any = true;
            acc.deployments += 1;
            let day = &mut acc.days
                [((t.date_naive() - first_day).num_days().max(0) as usize).min(day_count - 1)];
            day.0 += 1;
            match lead_time(d) {
                Some(s) => {
                    acc.leads.push(s);
                    day.2.push(s);
                }
                None => acc.without_built_at += 1,
            }
            if let Some(ran) = rb {
                acc.restores.push(ran.num_seconds().max(0));
                day.1 += 1;
            }
        }
        acc.apps += usize::from(any);
    }
    let environments = per_env
        .into_iter()
        .map(|(env, acc)| {
            let per_day = acc.deployments as f64 / window.days();
            let mut days = Vec::with_capacity(day_count);
            let mut date = first_day;
            for (deployments, rollbacks, mut leads) in acc.days {
                leads.sort_unstable();
                days.push(Day {
                    date,
                    deployments,
                    rollbacks,
                    lead_time_p50_seconds: percentile(&leads, 50),
                });
                let Some(next) = date.succ_opt() else { break };
                date = next;
            }
            EnvMetrics {
                environment: env.to_string(),
                deployments: acc.deployments,
                apps: acc.apps,
                per_day,
                per_week: per_day * 7.0,
                lead_time: Spread::of(acc.leads),
                without_built_at: acc.without_built_at,
                rollbacks: acc.restores.len(),
                rollback_rate: (acc.deployments > 0)
                    .then(|| acc.restores.len() as f64 / acc.deployments as f64),
                time_to_restore: Spread::of(acc.restores),
                days,
            }
        })
        .collect();
    Report {
        window,
        environments,
    }
}

/// Read what [`compute`] needs for `window` from `store`: every app of `envs` (all
/// environments when `None`).
pub fn collect(
    store: &dyn RecordStore,
    envs: Option<&[String]>,
    window: Window,
) -> Result<Vec<AppHistory>, RecordsError> {
    let envs = match envs {
        Some(e) => e.to_vec(),
        None => store.environments()?,
    };
    let mut pairs = Vec::new();
    for env in envs {
        for app in store.apps(&env)? {
            pairs.push((env.clone(), app));
        }
    }
    // Each history is read on its own; spread them over the cores.
    crate::parallel::map_on_cores(&pairs, |(env, app)| collect_one(store, env, app, window))
        .into_iter()
        .collect()
}

/// Read what [`compute`] needs for one app in one environment over `window`.
pub fn collect_one(
    store: &dyn RecordStore,
    env: &str,
    app: &str,
    window: Window,
) -> Result<AppHistory, RecordsError> {
    collect_history(&*store.open_history(env, app)?, env, app, window)
}

/// Read what [`compute`] needs from one opened history over `window`, in one backwards pass
/// from `window.until`: the window, then the look-back (only entries deployed after a window
/// image was built can have run it before), then the one entry before that (what a first
/// rollback replaced). Nothing older is read.
pub fn collect_history(
    history: &dyn HistoryReader,
    env: &str,
    app: &str,
    window: Window,
) -> Result<AppHistory, RecordsError> {
    let mut rev = history.points_rev(Some(window.until))?;
    let mut newest_first = Vec::new();
    let mut inside = Vec::new();
    let mut oldest_build = window.since;
    let mut lookback_start = None;
    while let Some(p) = rev.next_point()? {
        if p.deployed_at >= window.since {
            if let Some(b) = p.built_at {
                oldest_build = oldest_build.min(b);
            }
            inside.push(newest_first.len());
            newest_first.push(p);
            continue;
        }
        if inside.is_empty() {
            break;
        }
        newest_first.push(p);
        if p.deployed_at < oldest_build {
            lookback_start = Some(p.deployed_at);
            break;
        }
    }
    let mut digests = rev.into_digests();
    // Digests without built_at may have run at any time: search their history from the end.
    let mut earlier_digests = HashSet::new();
    if let Some(start) = lookback_start {
        let mut asked = HashSet::new();
        for &i in &inside {
            let d = newest_first[i];
            if lead_time(&d).is_some() || !asked.insert(d.digest) {
                continue;
            }
            let digest = digests.get(d.digest).to_string();
            if let Some(e) = history.last_with_digest_before(&digest, start)? {
                earlier_digests.insert(digests.intern(&e.image.digest));
            }
        }
    }
    newest_first.reverse();
    Ok(AppHistory {
        env: env.into(),
        app: app.into(),
        entries: newest_first,
        digests,
        earlier_digests,
    })
}

/// Parse a window start: a duration back from `now` (`30d`, `12h`, `2w`, `90m`) or a time as
/// [`crate::output::parse_time`] reads it.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let secs = match unit {
        "m" | "min" => Some(60),
        "h" => Some(3600),
        "d" => Some(86_400),
        "w" => Some(7 * 86_400),
        _ => None,
    };
    if let (Ok(n), Some(s)) = (num.parse::<i64>(), secs) {
        return n
            .checked_mul(s)
            .and_then(Duration::try_seconds)
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| format!("{t:?} reaches before any representable time"));
    }
    crate::output::parse_time(t).map_err(|e| {
        format!("{e}; a window start may also be a duration back from now: 30d, 12h, 2w")
    })
}

fn hours(secs: Option<i64>) -> String {
    secs.map(|s| format!("{:.1}h", s as f64 / 3600.0))
        .unwrap_or_else(|| "-".into())
}

/// `imagetrail metrics`.
pub fn run(args: crate::cli::MetricsArgs) -> anyhow::Result<crate::exit::ExitCode> {
    use crate::terminal::sanitize;
    let now = Utc::now();
    let since = parse_since(&args.since, now).map_err(crate::error::Error::Usage)?;
    if since > now {
        return Err(crate::error::Error::Usage(format!(
            "--since {:?} is in the future; give a start before now, e.g. 30d",
            args.since
        ))
        .into());
    }
    let window = Window { since, until: now };
    let envs = match &args.env {
        Some(e) => {
            crate::records::check_names(e, "x").map_err(crate::track::deploy::usage_if_name)?;
            Some(vec![e.clone()])
        }
        None => None,
    };
    let store = args.state.open(&args.database)?;
    let report = compute(&collect(&*store, envs.as_deref(), window)?, window);
    if args.format == crate::cli::Format::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(crate::exit::ExitCode::Success);
    }
    println!(
        "{} to {} ({:.1} days)",
        crate::output::time(&window.since),
        crate::output::time(&window.until),
        window.days()
    );
    if report.environments.is_empty() {
        println!(
            "no deployments recorded under {}",
            args.state.state_dir.display()
        );
        return Ok(crate::exit::ExitCode::Success);
    }
    let head = [
        "ENV",
        "DEPLOYS",
        "PER-DAY",
        "PER-WEEK",
        "LEAD-P50",
        "LEAD-P90",
        "ROLLBACKS",
        "RATE",
        "RESTORE-P50",
    ];
    let rows: Vec<[String; 9]> = report
        .environments
        .iter()
        .map(|m| {
            [
                sanitize(&m.environment),
                m.deployments.to_string(),
                format!("{:.2}", m.per_day),
                format!("{:.1}", m.per_week),
                hours(m.lead_time.p50_seconds),
                hours(m.lead_time.p90_seconds),
                m.rollbacks.to_string(),
                m.rollback_rate
                    .map(|r| format!("{:.1}%", r * 100.0))
                    .unwrap_or_else(|| "-".into()),
                hours(m.time_to_restore.p50_seconds),
            ]
        })
        .collect();
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(head.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    Ok(crate::exit::ExitCode::Success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Deployment, DeploymentRecord, ImageRecord};
    use chrono::TimeZone;

    fn t(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).unwrap()
    }

    fn dep(env: &str, digest: u32, at: DateTime<Utc>, built: Option<DateTime<Utc>>) -> Deployment {
        Deployment {
            app: "web".into(),
            image: ImageRecord {
                built_at: built.map(|b| crate::output::time(&b)),
                ..ImageRecord::new("reg.example/web", format!("sha256:{digest:064x}"))
            },
            deployment: DeploymentRecord::new(env, at, "alice"),
        }
    }

    fn hist(env: &str, entries: Vec<Deployment>) -> AppHistory {
        AppHistory::from_deployments(env, "web", &entries)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 90), Some(7));
        // n=4: p50 rank ceil(2)=2 -> 20; p90 rank ceil(3.6)=4 -> 40.
        assert_eq!(percentile(&[10, 20, 30, 40], 50), Some(20));
        assert_eq!(percentile(&[10, 20, 30, 40], 90), Some(40));
        // n=10: p90 rank 9.
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 90), Some(9));
    }

    #[test]
    fn a_hand_built_week_gives_the_numbers_worked_out_by_hand() {
        // Window: March 2 00:00 to March 8 00:00 = 6 days.
        let window = Window {
            since: t(2, 0),
            until: t(8, 0),
        };
        let prod = hist(
            "prod",
            vec![
                // Before the window: digest 1 ran (so deploying 1 again later is a rollback).
                dep("prod", 1, t(1, 10), Some(t(1, 9))),
                // In the window, lead times 2h, 5h, 1h (built then deployed):
                dep("prod", 2, t(2, 12), Some(t(2, 10))), // lead 2h
                dep("prod", 3, t(3, 12), Some(t(3, 7))),  // lead 5h
                // Rollback to 1: digest 3 ran from 3rd 12:00 to 3rd 15:00 = 3h.
                dep("prod", 1, t(3, 15), Some(t(1, 9))), // lead 2 days 6h = 54h
                // Redeploy of what runs: not a rollback.
                dep("prod", 1, t(4, 9), Some(t(1, 9))), // lead 72h
                dep("prod", 4, t(5, 12), Some(t(5, 11))), // lead 1h
                // Rollback to 3 after 4 ran 24h.
                dep("prod", 3, t(6, 12), None), // no built_at
            ],
        );
        let staging = hist(
            "staging",
            vec![dep(
                "staging",
                9,
                t(7, 0),
                Some(t(7, 0) + Duration::hours(1)),
            )],
        );
        let r = compute(&[prod, staging], window);
        assert_eq!(r.environments.len(), 2);
        let p = &r.environments[0];
        assert_eq!(p.environment, "prod");
        assert_eq!(p.deployments, 6);
        assert_eq!(p.apps, 1);
        assert!((p.per_day - 1.0).abs() < 1e-9, "{}", p.per_day);
        assert!((p.per_week - 7.0).abs() < 1e-9);
        // Leads (h): 2, 5, 54, 72, 1 -> sorted 1, 2, 5, 54, 72; p50 rank 3 = 5h; p90 rank 5 = 72h.
        assert_eq!(p.lead_time.count, 5);
        assert_eq!(p.lead_time.p50_seconds, Some(5 * 3600));
        assert_eq!(p.lead_time.p90_seconds, Some(72 * 3600));
        assert_eq!(p.without_built_at, 1);
        assert_eq!(p.rollbacks, 2);
        assert_eq!(p.rollback_rate, Some(2.0 / 6.0));
        // Restores: 3h and 24h: p50 rank 1 = 3h, p90 rank 2 = 24h.
        assert_eq!(p.time_to_restore.p50_seconds, Some(3 * 3600));
        assert_eq!(p.time_to_restore.p90_seconds, Some(24 * 3600));
        // Days: 2nd..8th inclusive = 7 chart days; the 3rd has 2 deployments, 1 rollback.
        assert_eq!(p.days.len(), 7);
        assert_eq!(p.days[1].deployments, 2);
        assert_eq!(p.days[1].rollbacks, 1);
        // Medians of the 3rd: leads 5h and 54h -> rank 1 = 5h.
        assert_eq!(p.days[1].lead_time_p50_seconds, Some(5 * 3600));
        let s = &r.environments[1];
        assert_eq!(s.environment, "staging");
        assert_eq!(s.deployments, 1);
        // Built an hour after the deployment (clock skew): clamped to 0.
        assert_eq!(s.lead_time.p50_seconds, Some(0));
        assert_eq!(s.rollbacks, 0);
        assert_eq!(s.rollback_rate, Some(0.0));
        assert_eq!(s.time_to_restore.p50_seconds, None);
    }

    #[test]
    fn a_digest_known_to_have_run_before_the_entries_is_a_rollback() {
        let window = Window {
            since: t(2, 0),
            until: t(3, 0),
        };
        let mut h = hist("prod", vec![dep("prod", 5, t(2, 1), None)]);
        assert_eq!(compute(&[h.clone()], window).environments[0].rollbacks, 0);
        h.ran_earlier(&format!("sha256:{:064x}", 5));
        let m = &compute(&[h], window).environments[0];
        assert_eq!(m.rollbacks, 1);
        // Nothing before it in the entries: it replaced nothing known, restore 0.
        assert_eq!(m.time_to_restore.p50_seconds, Some(0));
    }

    #[test]
    fn an_environment_without_deployments_in_the_window_has_no_rates() {
        let window = Window {
            since: t(10, 0),
            until: t(11, 0),
        };
        let r = compute(&[hist("prod", vec![dep("prod", 1, t(1, 0), None)])], window);
        let p = &r.environments[0];
        assert_eq!((p.deployments, p.apps), (0, 0));
        assert_eq!(p.rollback_rate, None);
        assert_eq!(p.lead_time.p50_seconds, None);
    }

    #[test]
    fn window_starts_read_durations_and_times() {
        let now = t(10, 0);
        assert_eq!(parse_since("30d", now).unwrap(), now - Duration::days(30));
        assert_eq!(parse_since("2w", now).unwrap(), now - Duration::days(14));
        assert_eq!(parse_since("12h", now).unwrap(), now - Duration::hours(12));
        assert_eq!(parse_since("2026-03-01T00:00:00Z", now).unwrap(), t(1, 0));
        assert!(parse_since("99999999999999999d", now).is_err());
        assert!(parse_since("soon", now).unwrap_err().contains("30d"));
    }
}
