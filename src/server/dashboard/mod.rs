//! The dashboard of `imagetrail serve`: server-rendered pages over the records, with the CSS
//! embedded in the binary (no build step, no CDN, no script: every page works without
//! JavaScript, and all state is in the query string so links can be shared).
//!
//! * `/`: environments × apps, the current image per cell, drift marked; `?at=T` shows the
//!   state at T.
//! * `/apps?app=A&days=90&page=N`: one app's timeline (SVG) and its history, paged.
//! * `/search?q=X`: where a digest, tag or revision runs now.
//! * `/scans?page=N`: the analytics callbacks received, newest first.
//! * `/delivery?since=30d&env=E`: the delivery metrics ([`crate::delivery`]) with small charts.
//! * `GET /api/v1/metrics/delivery?since=30d&env=E`: the same numbers as JSON.
//!
//! Reads can require a key ([`read_guard`]): with `--read-keys FILE`, every read (these pages
//! and the `GET /api/v1/...` endpoints) needs a read key or an API key, as
//! `Authorization: Bearer` for scripts or, for a person in a browser, a cookie set by the
//! `/login` form (a key in the URL would end up in history and proxy logs).

mod html;
mod svg;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use crate::delivery::{self, Window};
use crate::records::{Deployment, RecordStore};
use html::{Html, page, q};

/// The cookie that carries a read key for a browser.
const COOKIE: &str = "imagetrail_read";

/// History rows per page.
const PAGE_ROWS: usize = 50;

/// The dashboard's routes (merged into the server's router).
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(matrix))
        .route("/apps", get(app_page))
        .route("/search", get(search))
        .route("/scans", get(scans))
        .route("/delivery", get(delivery_page))
        .route("/login", get(login_form).post(login))
        .route("/assets/dashboard.css", get(css))
        .route("/api/v1/metrics/delivery", get(metrics_api))
}

/// Middleware: when the server has read keys, every `GET`/`HEAD` except `/healthz`, the login
/// form and the stylesheet needs a read key or an API key (Bearer header or the login cookie).
/// Without read keys, reads are open (the default, meant for loopback; `serve` warns when it
/// listens elsewhere).
pub(crate) async fn read_guard(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let open_path = matches!(
        req.uri().path(),
        "/healthz" | "/login" | "/assets/dashboard.css"
    );
    let is_read = req.method() == Method::GET || req.method() == Method::HEAD;
    let Some(read_keys) = state.config.read_keys.as_ref() else {
        return next.run(req).await;
    };
    if !is_read || open_path {
        return next.run(req).await;
    }
    let headers = req.headers();
    let presented = presented_key(headers);
    let accepted = presented.as_ref().is_some_and(|h| {
        read_keys.check(h).is_ok()
            || state
                .config
                .api_keys
                .as_ref()
                .is_some_and(|k| k.check(h).is_ok())
    });
    if accepted {
        return next.run(req).await;
    }
    if req.uri().path().starts_with("/api/") {
        let why = if presented.is_some() {
            "the key is not valid for reading this server; check the key you send"
        } else {
            "reading this server needs a key; send Authorization: Bearer <read-key>"
        };
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why).into_response();
    }
    let next_path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    login_page(
        StatusCode::UNAUTHORIZED,
        &next_path,
        presented
            .is_some()
            .then_some("That key is not accepted here."),
    )
}

/// The key a request presents, as an `Authorization: Bearer` header map (so the same check as
/// the API's applies): the header itself, else the login cookie.
fn presented_key(headers: &HeaderMap) -> Option<HeaderMap> {
    if headers.contains_key(header::AUTHORIZATION) {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            headers[header::AUTHORIZATION].clone(),
        );
        return Some(h);
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())?;
    let key: String = url::form_urlencoded::parse(format!("k={cookie}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())?;
    let value = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
    let mut h = HeaderMap::new();
    h.insert(header::AUTHORIZATION, value);
    Some(h)
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let mut b = Html::new();
    if let Some(e) = error {
        b.raw("<p class=\"bad\" role=\"alert\">✗ ")
            .text(e)
            .raw("</p>");
    }
    b.raw("<p>This server shows its records only with a read key (or an API key).</p>")
        .raw("<form method=\"post\" action=\"/login\"><label>Key <input type=\"password\" name=\"key\" autocomplete=\"current-password\" required></label>")
        .raw("<input type=\"hidden\" name=\"next\"")
        .attr("value", next)
        .raw("> <button type=\"submit\">Show the dashboard</button></form>")
        .raw("<p class=\"muted\">The key is kept in a cookie for this site only (HttpOnly, SameSite=Strict). Scripts send <code>Authorization: Bearer &lt;key&gt;</code> instead.</p>");
    html_response(status, page("Key needed", b))
}

async fn login_form(Query(p): Query<BTreeMap<String, String>>) -> Response {
    login_page(
        StatusCode::OK,
        p.get("next").map(String::as_str).unwrap_or("/"),
        None,
    )
}

/// `POST /login` (form): check the key, set the cookie, go back to the page asked for.
async fn login(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let key = form.get("key").map(|k| k.trim()).unwrap_or_default();
    // Only a path on this server: never an open redirect.
    let next = form
        .get("next")
        .filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .cloned()
        .unwrap_or_else(|| "/".into());
    let mut h = HeaderMap::new();
    let ok = HeaderValue::from_str(&format!("Bearer {key}"))
        .ok()
        .is_some_and(|v| {
            h.insert(header::AUTHORIZATION, v);
            !key.is_empty()
                && (state
                    .config
                    .read_keys
                    .as_ref()
                    .is_some_and(|k| k.check(&h).is_ok())
                    || state
                        .config
                        .api_keys
                        .as_ref()
                        .is_some_and(|k| k.check(&h).is_ok()))
        });
    if !ok {
        return login_page(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That key is not accepted here."),
        );
    }
    let secure = if state.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
        q(key)
    );
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let (Ok(c), Ok(l)) = (HeaderValue::from_str(&cookie), HeaderValue::from_str(&next)) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
        resp.headers_mut().insert(header::LOCATION, l);
    }
    resp
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        html::CSS,
    )
        .into_response()
}

fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing on these pages runs a script or loads from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// A page that could not be made: the reason, as a page.
fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    let mut b = Html::new();
    b.raw("<p class=\"bad\" role=\"alert\">✗ ")
        .text(message)
        .raw("</p>");
    html_response(status, page(title, b))
}

/// Run a blocking records read off the async workers.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&dyn RecordStore) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Response> {
    let store = state.records.reader(&state.store);
    match tokio::task::spawn_blocking(move || f(&*store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!("dashboard read failed: {e:#}");
            Err(error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot read the records",
                &format!("{e:#}"),
            ))
        }
        Err(e) => Err(error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot read the records",
            &e.to_string(),
        )),
    }
}

/// A time from the query string: RFC 3339, or the `YYYY-MM-DDTHH:MM[:SS]` of an
/// `<input type="datetime-local">`, read as UTC (the page says so).
fn parse_at(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(n.and_utc());
        }
    }
    Err(format!(
        "cannot read the time {s:?}: use 2026-01-25T05:00:00Z or the picker (UTC)"
    ))
}

fn short(digest: &str) -> String {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() > 12 => format!("sha256:{}", &h[..12]),
        _ => svg::truncate(digest, 19),
    }
}

fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Environments, app names across them, and the (environment, app) pairs with records.
type Layout = (Vec<String>, BTreeSet<String>, BTreeSet<(String, String)>);

/// Every app name across environments, and each environment's apps.
fn layout(store: &dyn RecordStore) -> anyhow::Result<Layout> {
    let envs = store.environments()?;
    let mut apps = BTreeSet::new();
    let mut pairs = BTreeSet::new();
    for env in &envs {
        for app in store.apps(env)? {
            apps.insert(app.clone());
            pairs.insert((env.clone(), app));
        }
    }
    Ok((envs, apps, pairs))
}

/// The query of `/`.
#[derive(Debug, Deserialize)]
struct MatrixQuery {
    at: Option<String>,
}

/// `/`: environments × apps.
async fn matrix(State(state): State<Arc<AppState>>, Query(mq): Query<MatrixQuery>) -> Response {
    let at_text = mq.at.filter(|s| !s.trim().is_empty());
    let at = match at_text.as_deref().map(parse_at).transpose() {
        Ok(t) => t,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, "Environments × apps", &e),
    };
    let data = blocking(&state, move |store| {
        let (envs, apps, pairs) = layout(store)?;
        let mut cells: BTreeMap<(String, String), Deployment> = BTreeMap::new();
        for (env, app) in pairs {
            let d = match at {
                Some(t) => store.at(&env, &app, t)?.0,
                None => store.current(&env, &app)?,
            };
            if let Some(d) = d {
                cells.insert((env, app), d);
            }
        }
        Ok((envs, apps, cells))
    })
    .await;
    let (envs, apps, cells) = match data {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut b = Html::new();
    b.raw("<form method=\"get\" action=\"/\"><label>State at (UTC) <input type=\"datetime-local\" step=\"1\" name=\"at\"")
        .attr(
            "value",
            &at.map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
                .unwrap_or_default(),
        )
        .raw("></label> <button type=\"submit\">Show</button> ");
    if at.is_some() {
        b.link("/", "now");
    }
    b.raw("</form>");
    match at {
        Some(t) => b
            .raw("<p>What ran at <strong>")
            .text(&time(&t))
            .raw("</strong>.</p>"),
        None => b.raw("<p>What runs now.</p>"),
    };
    if apps.is_empty() {
        b.raw("<p>No deployments are recorded yet. Record one with <code>imagetrail deploy</code> or <code>POST /api/v1/deployments</code>.</p>");
        return html_response(StatusCode::OK, page("Environments × apps", b));
    }
    b.raw("<table class=\"matrix\"><thead><tr><th scope=\"col\">App</th>");
    for env in &envs {
        b.raw("<th scope=\"col\">").text(env).raw("</th>");
    }
    b.raw("<th scope=\"col\">Drift</th></tr></thead><tbody>");
    for app in &apps {
        let digests: BTreeSet<&str> = envs
            .iter()
            .filter_map(|e| cells.get(&(e.clone(), app.clone())))
            .map(|d| d.image.digest.as_str())
            .collect();
        let drift = digests.len() > 1;
        b.raw("<tr><th scope=\"row\">")
            .link(&format!("/apps?app={}", q(app)), app)
            .raw("</th>");
        for env in &envs {
            match cells.get(&(env.clone(), app.clone())) {
                None => {
                    b.raw("<td class=\"cell empty muted\">— not deployed</td>");
                }
                Some(d) => {
                    let i = &d.image;
                    b.raw(if drift {
                        "<td class=\"cell drift\">"
                    } else {
                        "<td class=\"cell\">"
                    });
                    b.raw("<div class=\"tag\">")
                        .text(i.tag.as_deref().unwrap_or("(no tag)"))
                        .raw("</div><div><code class=\"digest\"")
                        .attr("title", &i.digest)
                        .raw(">");
                    if drift {
                        b.raw("≠ ");
                    }
                    b.text(&short(&i.digest)).raw("</code></div>");
                    if let Some(r) = &i.revision {
                        b.raw("<div>rev <code>")
                            .text(&svg::truncate(r, 12))
                            .raw("</code></div>");
                    }
                    b.raw("<div class=\"muted\">built ")
                        .text(i.built_at.as_deref().unwrap_or("unknown"))
                        .raw("</div><div class=\"muted\">deployed ")
                        .text(&time(&d.deployment.deployed_at))
                        .raw("</div><div class=\"by\">by ")
                        .text(&d.deployment.deployed_by)
                        .raw("</div></td>");
                }
            }
        }
        let placed = envs
            .iter()
            .filter(|e| cells.contains_key(&((*e).clone(), app.clone())))
            .count();
        if drift {
            b.raw("<td class=\"drift\">⚠ drift: ")
                .show(digests.len())
                .raw(" different digests</td>");
        } else if placed > 1 {
            b.raw("<td>✓ same digest in ")
                .show(placed)
                .raw(" environments</td>");
        } else {
            b.raw("<td class=\"muted\">in one environment</td>");
        }
        b.raw("</tr>");
    }
    b.raw("</tbody></table><p class=\"muted\">≠ and ⚠ mark an app that runs different digests across environments.</p>");
    html_response(StatusCode::OK, page("Environments × apps", b))
}

/// The query of `/apps`.
#[derive(Debug, Deserialize)]
struct AppQuery {
    app: Option<String>,
    days: Option<String>,
    page: Option<String>,
}

/// One deployment of an app's timeline page.
struct TimelineRow {
    /// Its environment's lane.
    lane: usize,
    /// When it was deployed.
    at: DateTime<Utc>,
    /// Where its whole entry is ([`crate::records::OpenHistory::entry_at`]).
    offset: u64,
    /// Whether it was a rollback.
    rollback: bool,
    /// The whole entry, read only when the page writes it out (a tooltip or a table row).
    whole: Option<Deployment>,
}

/// `/apps?app=`: one app's timeline and history.
async fn app_page(State(state): State<Arc<AppState>>, Query(aq): Query<AppQuery>) -> Response {
    let Some(app) = aq.app.filter(|a| !a.is_empty()) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "App",
            "name an app: /apps?app=NAME (the matrix links to each app)",
        );
    };
    let days: i64 = match aq.days.as_deref().map(str::parse::<i64>) {
        None => 90,
        Some(Ok(d)) if (1..=3650).contains(&d) => d,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "App",
                "days must be a whole number from 1 to 3650",
            );
        }
    };
    let page_no: usize = match aq.page.as_deref().map(str::parse::<usize>) {
        None => 1,
        Some(Ok(p)) if p >= 1 => p,
        _ => return error_page(StatusCode::BAD_REQUEST, "App", "page must be 1 or more"),
    };
    let now = Utc::now();
    let window = Window {
        since: now - Duration::days(days),
        until: now,
    };
    let name = app.clone();
    let data = blocking(&state, move |store| {
        let mut lanes = Vec::new();
        for env in store.environments()? {
            if store.apps(&env)?.contains(&name) {
                lanes.push(env);
            }
        }
        // The window's deployments as points (time, digest, rollback or not): the chart needs
        // no more, so whole entries are read only for what the page writes out below. The
        // lanes are read side by side (a dense one is thousands of entries).
        let read_lane = |lane: usize| -> anyhow::Result<_> {
            let env = &lanes[lane];
            let history = store.open_history(env, &name)?;
            let h = delivery::collect_history(&*history, env, &name, window)?;
            let marks = delivery::rollbacks(&h);
            let rows: Vec<TimelineRow> = h
                .entries
                .iter()
                .zip(marks)
                .filter(|(d, _)| d.deployed_at >= window.since)
                .map(|(d, rb)| TimelineRow {
                    lane,
                    at: d.deployed_at,
                    offset: d.offset,
                    rollback: rb.is_some(),
                    whole: None,
                })
                .collect();
            Ok((history, rows))
        };
        let ids: Vec<usize> = (0..lanes.len()).collect();
        let read = crate::parallel::map_on_cores(&ids, |&lane| read_lane(lane));
        let mut histories = Vec::with_capacity(lanes.len());
        let mut rows: Vec<TimelineRow> = Vec::new();
        for r in read {
            let (history, lane_rows) = r?;
            histories.push(history);
            rows.extend(lane_rows);
        }
        // Newest first (ties: environment order, then file order), as the table lists them.
        rows.sort_by_key(|r| std::cmp::Reverse(r.at));
        let pages = rows.len().div_ceil(PAGE_ROWS).max(1);
        let page_no = page_no.min(pages);
        let shown = (page_no - 1) * PAGE_ROWS..page_no * PAGE_ROWS;
        // Past svg::MAX_POINTS the chart draws one mark per column for all but rollbacks, so
        // only the rollbacks' own tooltips are written; the table shows one page.
        let aggregated = rows.len() > svg::MAX_POINTS;
        for (i, r) in rows.iter_mut().enumerate() {
            if !aggregated || r.rollback || shown.contains(&i) {
                r.whole = Some(histories[r.lane].entry_at(r.offset)?);
            }
        }
        Ok((lanes, rows, pages, page_no))
    })
    .await;
    let (lanes, rows, pages, page_no) = match data {
        Ok(v) => v,
        Err(r) => return r,
    };
    let title = format!("App {app}");
    if lanes.is_empty() {
        return error_page(
            StatusCode::NOT_FOUND,
            &title,
            "no deployment of this app is recorded in any environment",
        );
    }
    let mut b = Html::new();
    b.raw("<form method=\"get\" action=\"/apps\"><input type=\"hidden\" name=\"app\"")
        .attr("value", &app)
        .raw("><label>Last <input type=\"number\" min=\"1\" max=\"3650\" name=\"days\"")
        .attr("value", &days.to_string())
        .raw("> days</label> <button type=\"submit\">Show</button></form>");
    let aggregated = rows.len() > svg::MAX_POINTS;
    let points: Vec<svg::Point> = rows
        .iter()
        .map(|r| svg::Point {
            lane: r.lane,
            at: r.at,
            rollback: r.rollback,
            title: match &r.whole {
                None => String::new(),
                Some(d) => format!(
                    "{} in {} at {}: {}{} by {}",
                    app,
                    lanes[r.lane],
                    time(&d.deployment.deployed_at),
                    d.image.digest,
                    d.image
                        .revision
                        .as_deref()
                        .map(|r| format!(" (revision {r})"))
                        .unwrap_or_default(),
                    d.deployment.deployed_by
                ),
            },
        })
        .collect();
    let rollbacks = points.iter().filter(|p| p.rollback).count();
    let (chart, marks) = svg::timeline(&lanes, &points, window.since, window.until);
    b.raw("<p>")
        .show(points.len())
        .raw(" deployments in the last ")
        .show(days)
        .raw(" days, ")
        .show(rollbacks)
        .raw(" of them rollbacks (◆ ↺ on the chart: a digest that ran here before).</p>");
    if aggregated {
        b.raw("<p class=\"marks\">")
            .show(points.len())
            .raw(" deployments, drawn as ")
            .show(marks)
            .raw(" marks: one per environment and ")
            .show(svg::COLUMN_PX)
            .raw("-pixel column (its tooltip gives how many and when); rollbacks always drawn one by one. The table below lists every deployment.</p>");
    }
    b.push(chart);
    // The table: newest first, paged.
    b.raw("<h2>History</h2><table class=\"history\"><thead><tr><th scope=\"col\">Deployed</th><th scope=\"col\">Environment</th><th scope=\"col\">Tag</th><th scope=\"col\">Digest</th><th scope=\"col\">Revision</th><th scope=\"col\">Built</th><th scope=\"col\">By</th><th scope=\"col\">Rollback</th></tr></thead><tbody>");
    for r in rows.iter().skip((page_no - 1) * PAGE_ROWS).take(PAGE_ROWS) {
        let (Some(d), lane, rb) = (&r.whole, &r.lane, &r.rollback) else {
            continue;
        };
        b.raw("<tr><td>")
            .text(&time(&d.deployment.deployed_at))
            .raw("</td><td>")
            .text(&lanes[*lane])
            .raw("</td><td>")
            .text(d.image.tag.as_deref().unwrap_or("—"))
            .raw("</td><td><code")
            .attr("title", &d.image.digest)
            .raw(">")
            .text(&short(&d.image.digest))
            .raw("</code></td><td>")
            .text(d.image.revision.as_deref().unwrap_or("—"))
            .raw("</td><td>")
            .text(d.image.built_at.as_deref().unwrap_or("—"))
            .raw("</td><td>")
            .text(&d.deployment.deployed_by)
            .raw("</td><td>");
        if *rb {
            b.raw("<span class=\"bad\">↺ rollback</span>");
        }
        b.raw("</td></tr>");
    }
    b.raw("</tbody></table><p class=\"pager\">");
    let link = |p: usize| format!("/apps?app={}&days={days}&page={p}", q(&app));
    if page_no > 1 {
        b.link(&link(page_no - 1), "← newer");
    }
    b.raw("<span>page ")
        .show(page_no)
        .raw(" of ")
        .show(pages)
        .raw("</span>");
    if page_no < pages {
        b.link(&link(page_no + 1), "older →");
    }
    b.raw("</p>");
    html_response(StatusCode::OK, page(&title, b))
}

/// The query of `/search`.
#[derive(Debug, Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

/// Whether a current deployment matches the search text: a digest (or its start, at least 6
/// hex digits), a tag, a revision (or its start), or a `repo:tag` / `repo@digest` reference.
fn matches(d: &Deployment, wanted: &str) -> bool {
    let w = wanted.trim();
    let i = &d.image;
    let (repo, rest) = match w.rsplit_once('@') {
        Some((r, dg)) => (Some(r), dg),
        None => match w.rsplit_once(':') {
            Some((r, t)) if !r.is_empty() && !r.starts_with("sha256") && !t.contains('/') => {
                (Some(r), t)
            }
            _ => (None, w),
        },
    };
    if repo.is_some_and(|r| r != i.repo && !i.repo.ends_with(&format!("/{r}"))) {
        return false;
    }
    let hex = rest
        .strip_prefix("sha256:")
        .unwrap_or(rest)
        .to_ascii_lowercase();
    let digest_hit = hex.len() >= 6
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && [Some(&i.digest), i.index_digest.as_ref()]
            .into_iter()
            .flatten()
            .any(|dg| dg.strip_prefix("sha256:").unwrap_or(dg).starts_with(&hex));
    let revision_hit = hex.len() >= 6
        && i.revision
            .as_deref()
            .is_some_and(|r| r.to_ascii_lowercase().starts_with(&hex));
    let tag_hit = i.tag.as_deref() == Some(rest);
    digest_hit || revision_hit || tag_hit
}

/// `/search?q=`: where does X run now.
async fn search(State(state): State<Arc<AppState>>, Query(sq): Query<SearchQuery>) -> Response {
    let wanted = sq.q.unwrap_or_default();
    let mut b = Html::new();
    b.raw("<form method=\"get\" action=\"/search\" role=\"search\"><label>Digest, tag or revision <input type=\"search\" name=\"q\" size=\"50\"")
        .attr("value", &wanted)
        .raw("></label> <button type=\"submit\">Search</button></form>");
    if wanted.trim().is_empty() {
        return html_response(StatusCode::OK, page("Where does it run", b));
    }
    let w = wanted.clone();
    let hits = match blocking(&state, move |store| {
        let (_, _, pairs) = layout(store)?;
        let mut hits = Vec::new();
        for (env, app) in pairs {
            if let Some(d) = store.current(&env, &app)?
                && matches(&d, &w)
            {
                hits.push(d);
            }
        }
        Ok(hits)
    })
    .await
    {
        Ok(h) => h,
        Err(r) => return r,
    };
    if hits.is_empty() {
        b.raw("<p class=\"result\">")
            .text(&wanted)
            .raw(" runs nowhere now.</p>");
    } else {
        b.raw("<p class=\"result\">")
            .text(&wanted)
            .raw(" runs in ")
            .show(hits.len())
            .raw(if hits.len() == 1 { " place" } else { " places" })
            .raw(":</p><table class=\"hits\"><thead><tr><th scope=\"col\">Environment</th><th scope=\"col\">App</th><th scope=\"col\">Tag</th><th scope=\"col\">Digest</th><th scope=\"col\">Revision</th><th scope=\"col\">Deployed</th><th scope=\"col\">By</th></tr></thead><tbody>");
        for d in &hits {
            b.raw("<tr><td>")
                .text(&d.deployment.workspace)
                .raw("</td><td>")
                .link(&format!("/apps?app={}", q(&d.app)), &d.app)
                .raw("</td><td>")
                .text(d.image.tag.as_deref().unwrap_or("—"))
                .raw("</td><td><code>")
                .text(&d.image.digest)
                .raw("</code></td><td>")
                .text(d.image.revision.as_deref().unwrap_or("—"))
                .raw("</td><td>")
                .text(&time(&d.deployment.deployed_at))
                .raw("</td><td>")
                .text(&d.deployment.deployed_by)
                .raw("</td></tr>");
        }
        b.raw("</tbody></table>");
    }
    html_response(StatusCode::OK, page("Where does it run", b))
}

/// The query of `/scans`.
#[derive(Debug, Deserialize)]
struct ScansQuery {
    page: Option<String>,
}

/// The most callbacks the scans page reads (the newest), whichever store holds them.
const SCANS_LIMIT: u32 = 5_000;

/// `/scans`: the register and scanner-error callbacks, newest first.
async fn scans(State(state): State<Arc<AppState>>, Query(sq): Query<ScansQuery>) -> Response {
    let page_no: usize = match sq.page.as_deref().map(str::parse::<usize>) {
        None => 1,
        Some(Ok(p)) if p >= 1 => p,
        _ => return error_page(StatusCode::BAD_REQUEST, "Scans", "page must be 1 or more"),
    };
    let entries = match state.analytics.newest(SCANS_LIMIT).await {
        Ok(e) => e,
        Err(e) => return error_page(e.status, "Cannot read the callbacks", &e.summary),
    };
    let str_of =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
    let mut b = Html::new();
    let failures = entries
        .iter()
        .filter(|e| e.get("kind").and_then(|k| k.as_str()) == Some("scanner-error"))
        .count();
    b.raw("<p>")
        .show(entries.len())
        .raw(" callbacks received, newest first; ")
        .show(failures)
        .raw(" of them scanner errors (✗).</p>");
    let pages = entries.len().div_ceil(PAGE_ROWS).max(1);
    let page_no = page_no.min(pages);
    b.raw("<table class=\"scans\"><thead><tr><th scope=\"col\">Received</th><th scope=\"col\">Kind</th><th scope=\"col\">Image</th><th scope=\"col\">Repository and commit</th><th scope=\"col\">Outcome</th></tr></thead><tbody>");
    for e in entries
        .iter()
        .skip((page_no - 1) * PAGE_ROWS)
        .take(PAGE_ROWS)
    {
        let req = e.get("request").cloned().unwrap_or_default();
        let kind = str_of(e, "kind").unwrap_or_default();
        let failed = kind == "scanner-error";
        b.raw(if failed {
            "<tr class=\"failed\"><td>"
        } else {
            "<tr><td>"
        })
        .text(&str_of(e, "received_at").unwrap_or_default())
        .raw("</td><td>");
        if failed {
            b.raw("<span class=\"bad\">✗ scanner error</span>");
        } else {
            b.raw("✓ ").text(&kind);
        }
        b.raw("</td><td>")
            .text(&str_of(&req, "image-name").unwrap_or_else(|| "—".into()))
            .raw("</td><td>")
            .text(&str_of(&req, "git-url").unwrap_or_default());
        if let Some(sha) = str_of(&req, "git-sha") {
            b.raw(" @ <code>").text(&sha).raw("</code>");
        }
        b.raw("</td><td>");
        if failed {
            let errors: Vec<String> = match req.get("error") {
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                _ => vec![],
            };
            b.raw("<ul>");
            for m in errors.iter().take(20) {
                b.el("li", &svg::truncate(m, 500));
            }
            b.raw("</ul>");
        } else {
            let answer = e.get("answer").cloned().unwrap_or_default();
            b.text(&svg::truncate(
                &str_of(&answer, "summary").unwrap_or_default(),
                300,
            ));
        }
        b.raw("</td></tr>");
    }
    b.raw("</tbody></table><p class=\"pager\">");
    if page_no > 1 {
        b.link(&format!("/scans?page={}", page_no - 1), "← newer");
    }
    b.raw("<span>page ")
        .show(page_no)
        .raw(" of ")
        .show(pages)
        .raw("</span>");
    if page_no < pages {
        b.link(&format!("/scans?page={}", page_no + 1), "older →");
    }
    b.raw("</p>");
    html_response(StatusCode::OK, page("Scans", b))
}

/// The query of `/delivery` and `/api/v1/metrics/delivery`.
#[derive(Debug, Deserialize)]
struct MetricsQuery {
    since: Option<String>,
    env: Option<String>,
}

async fn report(
    state: &Arc<AppState>,
    mq: MetricsQuery,
) -> Result<Result<delivery::Report, anyhow::Error>, String> {
    let now = Utc::now();
    let since_text = mq
        .since
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "30d".into());
    let since = delivery::parse_since(&since_text, now)?;
    if since > now {
        return Err(format!("since={since_text:?} is in the future"));
    }
    let window = Window { since, until: now };
    let envs = mq.env.filter(|e| !e.is_empty()).map(|e| vec![e]);
    let store = state.records.reader(&state.store);
    let r = tokio::task::spawn_blocking(move || -> anyhow::Result<delivery::Report> {
        let h = delivery::collect(&*store, envs.as_deref(), window)?;
        Ok(delivery::compute(&h, window))
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(r)
}

/// `GET /api/v1/metrics/delivery?since=30d&env=E`.
async fn metrics_api(
    State(state): State<Arc<AppState>>,
    Query(mq): Query<MetricsQuery>,
) -> Result<Json<delivery::Report>, ApiError> {
    match report(&state, mq).await {
        Err(e) => Err(ApiError::bad_request(
            "invalid-since",
            format!("{e}; e.g. since=30d"),
        )),
        Ok(Err(e)) => Err(ApiError::internal("cannot read the records", &e)),
        Ok(Ok(r)) => Ok(Json(r)),
    }
}

fn duration_text(secs: Option<i64>) -> String {
    match secs {
        None => "—".into(),
        Some(s) if s < 120 => format!("{s} s"),
        Some(s) if s < 7200 => format!("{:.0} min", s as f64 / 60.0),
        Some(s) if s < 172_800 => format!("{:.1} h", s as f64 / 3600.0),
        Some(s) => format!("{:.1} d", s as f64 / 86_400.0),
    }
}

/// `/delivery`: the metrics per environment with small charts.
async fn delivery_page(
    State(state): State<Arc<AppState>>,
    Query(mq): Query<MetricsQuery>,
) -> Response {
    let since_text = mq.since.clone().unwrap_or_else(|| "30d".into());
    let env_text = mq.env.clone().unwrap_or_default();
    let r = match report(&state, mq).await {
        Err(e) => return error_page(StatusCode::BAD_REQUEST, "Delivery", &e),
        Ok(Err(e)) => {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Delivery",
                &format!("cannot read the records: {e:#}"),
            );
        }
        Ok(Ok(r)) => r,
    };
    let mut b = Html::new();
    b.raw("<form method=\"get\" action=\"/delivery\"><label>Since <input name=\"since\" size=\"22\"")
        .attr("value", &since_text)
        .raw("></label> <label>Environment <input name=\"env\"")
        .attr("value", &env_text)
        .raw("></label> <button type=\"submit\">Show</button> <span class=\"muted\">(30d, 2w, 12h or a time; definitions in the README)</span></form><p>From ")
        .text(&time(&r.window.since))
        .raw(" to ")
        .text(&time(&r.window.until))
        .raw(".</p>");
    if r.environments.is_empty() {
        b.raw("<p>No deployments are recorded.</p>");
        return html_response(StatusCode::OK, page("Delivery", b));
    }
    b.raw("<table class=\"metrics\"><thead><tr><th scope=\"col\">Environment</th><th scope=\"col\">Deployments</th><th scope=\"col\">Per day</th><th scope=\"col\">Per week</th><th scope=\"col\">Lead time p50</th><th scope=\"col\">Lead time p90</th><th scope=\"col\">Rollbacks</th><th scope=\"col\">Rollback rate</th><th scope=\"col\">Time to restore p50</th></tr></thead><tbody>");
    for m in &r.environments {
        b.raw("<tr><th scope=\"row\">")
            .text(&m.environment)
            .raw("</th><td>")
            .show(m.deployments)
            .raw("</td><td>")
            .text(&format!("{:.2}", m.per_day))
            .raw("</td><td>")
            .text(&format!("{:.1}", m.per_week))
            .raw("</td><td>")
            .text(&duration_text(m.lead_time.p50_seconds))
            .raw("</td><td>")
            .text(&duration_text(m.lead_time.p90_seconds))
            .raw("</td><td>")
            .show(m.rollbacks)
            .raw("</td><td>")
            .text(
                &m.rollback_rate
                    .map(|x| format!("{:.1} %", x * 100.0))
                    .unwrap_or_else(|| "—".into()),
            )
            .raw("</td><td>")
            .text(&duration_text(m.time_to_restore.p50_seconds))
            .raw("</td></tr>");
    }
    b.raw("</tbody></table>");
    for m in &r.environments {
        let labels: Vec<String> = m.days.iter().map(|d| d.date.to_string()).collect();
        let per_day: Vec<f64> = m.days.iter().map(|d| d.deployments as f64).collect();
        let rollbacks: Vec<f64> = m.days.iter().map(|d| d.rollbacks as f64).collect();
        let leads: Vec<f64> = m
            .days
            .iter()
            .map(|d| d.lead_time_p50_seconds.unwrap_or(0) as f64 / 3600.0)
            .collect();
        b.raw("<h2>")
            .text(&m.environment)
            .raw("</h2><div class=\"charts\">");
        b.push(svg::bars(
            "Deployments per day",
            &labels,
            &per_day,
            "deployments",
            false,
        ));
        b.push(svg::bars(
            "Rollbacks per day",
            &labels,
            &rollbacks,
            "rollbacks",
            true,
        ));
        b.push(svg::bars(
            "Lead time p50 per day (hours)",
            &labels,
            &leads,
            "h",
            false,
        ));
        b.raw("</div>");
    }
    html_response(StatusCode::OK, page("Delivery", b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{DeploymentRecord, ImageRecord};

    fn d(tag: &str, digest: &str, revision: &str) -> Deployment {
        Deployment {
            app: "web".into(),
            image: ImageRecord {
                tag: Some(tag.into()),
                revision: Some(revision.into()),
                ..ImageRecord::new("reg.example/team/web", digest)
            },
            deployment: DeploymentRecord::new("prod", Utc::now(), "alice"),
        }
    }

    #[test]
    fn search_matches_digest_prefixes_tags_revisions_and_references() {
        let dg = format!("sha256:{}", "ab12cd".repeat(10) + "ffff");
        let x = d("v1.2", &dg, "46e443d9");
        assert!(matches(&x, &dg));
        assert!(matches(&x, "ab12cd"));
        assert!(matches(&x, "sha256:ab12cdab"));
        assert!(!matches(&x, "ab12")); // too short to mean a digest
        assert!(matches(&x, "v1.2"));
        assert!(matches(&x, "46e443d"));
        assert!(matches(&x, "team/web:v1.2"));
        assert!(matches(&x, "reg.example/team/web:v1.2"));
        assert!(!matches(&x, "other/web:v1.2"));
        assert!(matches(&x, &format!("team/web@{dg}")));
        assert!(!matches(&x, "v1.3"));
    }

    #[test]
    fn times_from_the_picker_are_utc() {
        assert_eq!(
            parse_at("2026-01-25T05:00").unwrap().to_rfc3339(),
            "2026-01-25T05:00:00+00:00"
        );
        assert!(parse_at("yesterday-ish").is_err());
    }
}
