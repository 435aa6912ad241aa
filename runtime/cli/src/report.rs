//! `wbuild report [BUILD_ID] --html FILE`: one self-contained HTML page about a recorded
//! build, from the build history and the access logs the store keeps.
//!
//! The page holds its CSS, its script and its data inline and names no URL: it opens from a
//! file with no network (its Content-Security-Policy forbids any fetch). It shows the build
//! (command, targets, outcome, wall time, actions, cache hit rate), a timeline with one row
//! per worker slot and one bar per action (the critical path highlighted), the cache hit rate
//! by mnemonic, the slowest actions, the failures with their messages, and, on a click on any
//! action, its details with a summary of what it read, wrote and looked for in vain.
//!
//! Labels, paths and messages are the user's: every one is HTML-escaped in the markup, and
//! the JSON data block escapes `<`, `>` and `&` so no text can end the `<script>` element.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use wbuild_store::{ActionRecord, BuildRecord, Digest, Store};

use super::Cli;
use super::log::{describe, find_build, recorded_critical_path};

/// How many paths of each kind an action's access summary lists.
const FIRST_PATHS: usize = 20;
/// How many actions the slowest-actions table lists.
const SLOWEST: usize = 15;
/// Height of one timeline row (pixels).
const ROW_PX: u64 = 24;

/// Statuses of cache hits.
fn hit(status: &str) -> bool {
    matches!(status, "cached" | "remote_cached")
}

/// What an action's access log says, in short.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AccessSummary {
    /// Accesses per kind (`read`, `write`, `stat`, `list`, `missing`, `denied`).
    pub counts: BTreeMap<String, u64>,
    /// The first paths of each kind that matters most (in the order they happened).
    pub reads: Vec<String>,
    pub writes: Vec<String>,
    pub missing: Vec<String>,
    pub denied: Vec<String>,
}

impl AccessSummary {
    /// The summary of an access log (`AccessLog` JSON as the store keeps it).
    pub fn from_log(log: &wbuild_exec_wasi::AccessLog) -> AccessSummary {
        let mut s = AccessSummary::default();
        for a in &log.accesses {
            let kind = format!("{:?}", a.kind).to_lowercase();
            let list = match kind.as_str() {
                "read" => Some(&mut s.reads),
                "write" => Some(&mut s.writes),
                "missing" => Some(&mut s.missing),
                "denied" => Some(&mut s.denied),
                _ => None,
            };
            if let Some(list) = list
                && list.len() < FIRST_PATHS
            {
                list.push(a.path.clone());
            }
            *s.counts.entry(kind).or_default() += 1;
        }
        s
    }
}

/// One action as the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionView {
    pub label: String,
    pub mnemonic: String,
    pub status: String,
    pub duration_ms: u64,
    /// Start (µs from the build's start) and length on the timeline.
    pub start_us: u64,
    pub duration_us: u64,
    pub slot: u64,
    /// Whether start and slot were recorded (otherwise the action is laid out after the one
    /// before it on row 0).
    pub timed: bool,
    pub error: Option<String>,
    pub digest: String,
    pub deps: Option<Vec<String>>,
    pub critical: bool,
    /// `None`: no access log is stored for it. `Err`: one is, but it could not be read.
    pub access: Option<std::result::Result<AccessSummary, String>>,
}

/// Cache hits of one mnemonic.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MnemonicRow {
    pub mnemonic: String,
    pub actions: u64,
    pub hits: u64,
    pub executed: u64,
    pub failed: u64,
    /// `hits / actions`.
    pub hit_rate: f64,
}

/// Everything the page shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportData {
    pub build: BuildRecord,
    pub actions: Vec<ActionView>,
    /// Indices into `actions`, first to last; empty if the edges were not recorded.
    pub critical_path: Vec<usize>,
    pub critical_ms: u64,
    pub edges_recorded: bool,
    pub mnemonics: Vec<MnemonicRow>,
    /// Indices into `actions`, slowest first.
    pub slowest: Vec<usize>,
    /// Indices into `actions` of the failed ones, in the order they finished.
    pub failures: Vec<usize>,
    /// Cache hits over all recorded actions (a no-op build: from the build's counters).
    pub hit_rate: Option<f64>,
    /// The timeline's window, µs from the build's start, and its number of rows.
    pub span_start_us: u64,
    pub span_end_us: u64,
    pub slots: u64,
}

/// Cache hit rate by mnemonic, sorted by mnemonic.
pub fn hit_rate_by_mnemonic(actions: &[ActionRecord]) -> Vec<MnemonicRow> {
    let mut rows: BTreeMap<&str, MnemonicRow> = BTreeMap::new();
    for a in actions {
        let row = rows
            .entry(a.mnemonic.as_str())
            .or_insert_with(|| MnemonicRow {
                mnemonic: a.mnemonic.clone(),
                actions: 0,
                hits: 0,
                executed: 0,
                failed: 0,
                hit_rate: 0.0,
            });
        row.actions += 1;
        match a.status.as_str() {
            s if hit(s) => row.hits += 1,
            "failed" => row.failed += 1,
            _ => row.executed += 1,
        }
    }
    rows.into_values()
        .map(|mut r| {
            r.hit_rate = r.hits as f64 / r.actions.max(1) as f64;
            r
        })
        .collect()
}

/// Shapes a build's records (and each action's access summary, same order) for the page.
pub fn shape(
    build: &BuildRecord,
    records: &[ActionRecord],
    access: Vec<Option<std::result::Result<AccessSummary, String>>>,
) -> ReportData {
    let recorded = recorded_critical_path(records);
    let edges_recorded = recorded.is_some() && !records.is_empty();
    let (critical_path, critical_ms) = recorded.unwrap_or_default();
    let mut untimed_cursor = 0u64;
    let mut access = access.into_iter();
    let actions: Vec<ActionView> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let duration_us = r.duration_us.unwrap_or(r.duration_ms.saturating_mul(1000));
            let (start_us, slot, timed) = match (r.start_us, r.slot) {
                (Some(s), Some(slot)) => (s, slot, true),
                _ => {
                    let s = untimed_cursor;
                    untimed_cursor = untimed_cursor.saturating_add(duration_us);
                    (s, 0, false)
                }
            };
            ActionView {
                label: r.label.clone(),
                mnemonic: r.mnemonic.clone(),
                status: r.status.clone(),
                duration_ms: r.duration_ms,
                start_us,
                duration_us,
                slot,
                timed,
                error: r.error.clone(),
                digest: r.action_digest.clone(),
                deps: r.deps.clone(),
                critical: critical_path.contains(&i),
                access: access.next().flatten(),
            }
        })
        .collect();
    let mut slowest: Vec<usize> = (0..actions.len()).collect();
    // Stable: equal durations keep the order they finished in.
    slowest.sort_by_key(|&i| std::cmp::Reverse(actions[i].duration_us));
    slowest.truncate(SLOWEST);
    let failures = (0..actions.len())
        .filter(|&i| actions[i].status == "failed")
        .collect();
    let hit_rate = if records.is_empty() {
        let total = build.executed + build.cached + build.failed;
        (total > 0).then(|| build.cached as f64 / total as f64)
    } else {
        Some(records.iter().filter(|a| hit(&a.status)).count() as f64 / records.len() as f64)
    };
    let span_start_us = actions.iter().map(|a| a.start_us).min().unwrap_or(0);
    let span_end_us = actions
        .iter()
        .map(|a| a.start_us.saturating_add(a.duration_us))
        .max()
        .unwrap_or(0)
        .max(span_start_us + 1);
    let slots = actions.iter().map(|a| a.slot + 1).max().unwrap_or(1);
    ReportData {
        build: build.clone(),
        mnemonics: hit_rate_by_mnemonic(records),
        actions,
        critical_path,
        critical_ms,
        edges_recorded,
        slowest,
        failures,
        hit_rate,
        span_start_us,
        span_end_us,
        slots,
    }
}

/// `text` escaped for HTML text and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `value` as JSON that can sit inside a `<script>` element: no `<`, `>` or `&` (so no
/// `</script>` or `<!--`), and no U+2028/U+2029; all are `\uXXXX` escapes, which JSON allows
/// inside strings, the only place these characters can occur.
pub fn script_json<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_string(value).expect("report data serialises");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// `ms` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC` (the provenance's RFC 3339 time,
/// spelled for people).
fn utc(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    wbuild_driver::provenance::rfc3339(t)
        .replacen('T', " ", 1)
        .replacen('Z', " UTC", 1)
}

fn ms_text(us: u64) -> String {
    if us >= 10_000 {
        format!("{} ms", us / 1000)
    } else {
        format!("{:.1} ms", us as f64 / 1000.0)
    }
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#1d2b3a;color:#fff;padding:14px 20px}
header h1{margin:0 0 6px;font-size:20px}
header dl{display:flex;flex-wrap:wrap;gap:4px 22px;margin:0}
header dt{opacity:.7}header dd{margin:0 0 0 4px;font-weight:600}
header div{display:flex}
main{display:grid;grid-template-columns:minmax(0,1fr) 340px;gap:16px;padding:16px 20px}
section{background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:10px 14px;margin-bottom:16px}
h2{font-size:16px;margin:0 0 8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eceff2;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr[data-action]{cursor:pointer}tr[data-action]:hover{background:#eef4ff}
.timeline{position:relative;margin-left:64px;border-left:1px solid #9aa5b1;background:repeating-linear-gradient(#fff 0 24px,#f3f5f8 24px 48px)}
.slot{position:absolute;left:-64px;width:58px;text-align:right;font-size:12px;color:#56616d;line-height:24px}
.bar{position:absolute;height:18px;min-width:3px;box-sizing:border-box;border-radius:3px;font-size:11px;line-height:18px;color:#fff;overflow:hidden;white-space:nowrap;text-overflow:ellipsis;padding:0 3px;cursor:pointer}
.st-executed{background:#2f6fd6}.st-cached{background:#3a9d5d}.st-remote_cached{background:#2a9d9a}
.st-remote_executed{background:#7a4fd0}.st-failed{background:#d13b3b}
.bar.crit{box-shadow:0 0 0 2px #f29d12 inset;border:2px solid #f29d12}
.selected{outline:3px solid #111;outline-offset:1px}
.axis{position:relative;height:18px;margin-left:64px;font-size:11px;color:#56616d}
.axis span{position:absolute;transform:translateX(-50%);white-space:nowrap}
.axis span:last-child{transform:translateX(-100%)}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.failure{border-left:4px solid #d13b3b;padding:4px 10px;margin:8px 0;cursor:pointer}
pre{white-space:pre-wrap;word-break:break-all;background:#f6f7f9;padding:6px;margin:4px 0;font-size:12px}
aside{position:sticky;top:16px;align-self:start;background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:10px 14px;overflow-wrap:anywhere}
aside dt{font-weight:600}aside dd{margin:0 0 6px}
.muted{color:#6b7580}
"#;

const SCRIPT: &str = r#"
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var panel = document.getElementById("details");
  function el(tag, text) {
    var e = document.createElement(tag);
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function paths(title, list, count) {
    if (!count) return;
    panel.append(el("h4", title + " (" + count + ")"));
    var ul = el("ul");
    list.forEach(function (p) { ul.append(el("li", p)); });
    if (count > list.length) ul.append(el("li", "... " + (count - list.length) + " more"));
    panel.append(ul);
  }
  function show(i) {
    var a = data.actions[i];
    if (!a) return;
    panel.replaceChildren();
    panel.append(el("h2", a.label));
    var dl = el("dl");
    function row(k, v) { dl.append(el("dt", k)); dl.append(el("dd", v)); }
    row("mnemonic", a.mnemonic);
    row("status", a.status);
    row("duration", (a.duration_us / 1000).toFixed(1) + " ms");
    if (a.timed) row("started", (a.start_us / 1000).toFixed(1) + " ms after the build began, on slot " + a.slot);
    row("critical path", a.critical ? "yes" : "no");
    row("action digest", a.digest || "none");
    row("depends on", a.deps === null ? "not recorded" : (a.deps.length ? a.deps.join(", ") : "nothing"));
    panel.append(dl);
    if (a.error !== null) { panel.append(el("h3", "Why it failed")); panel.append(el("pre", a.error)); }
    panel.append(el("h3", "Accesses"));
    if (a.access === null) {
      panel.append(el("p", "No access log is stored for this action (only WASI actions run with this cache have one)."));
    } else if (a.access.Err !== undefined) {
      panel.append(el("p", "The access log could not be read: " + a.access.Err));
    } else {
      var s = a.access.Ok, c = s.counts;
      var summary = el("p", ["read", "write", "missing", "stat", "list", "denied"].map(function (k) {
        return (c[k] || 0) + " " + k;
      }).join(", "));
      summary.id = "access-summary";
      panel.append(summary);
      paths("reads", s.reads, c.read);
      paths("writes", s.writes, c.write);
      paths("missing", s.missing, c.missing);
      paths("denied", s.denied, c.denied);
    }
    document.querySelectorAll(".selected").forEach(function (e) { e.classList.remove("selected"); });
    document.querySelectorAll('[data-action="' + i + '"]').forEach(function (e) { e.classList.add("selected"); });
  }
  document.addEventListener("click", function (ev) {
    var t = ev.target.closest("[data-action]");
    if (t) show(Number(t.getAttribute("data-action")));
  });
  var m = /^#action-(\d+)$/.exec(location.hash);
  if (m) show(Number(m[1]));
})();
"#;

/// The page.
pub fn render(d: &ReportData) -> String {
    let json = script_json(d);
    // The only script that may run is the one carrying this nonce.
    let nonce = blake3::hash(json.as_bytes()).to_hex()[..32].to_owned();
    let b = &d.build;
    let mut h = String::with_capacity(16 * 1024 + d.actions.len() * 600);
    let title = format!("wbuild build {} ({})", b.id, b.command);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; img-src data:\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape_html(&title)
    );
    // Header.
    let wall = b.end_unix_ms.map_or("unfinished".to_owned(), |e| {
        ms_text(e.saturating_sub(b.start_unix_ms) * 1000)
    });
    let actions = if d.actions.is_empty() && b.cached > 0 {
        format!("{} (a no-op build: all up to date)", b.cached)
    } else {
        d.actions.len().to_string()
    };
    let _ = write!(
        h,
        "<header><h1>{}</h1><dl>",
        escape_html(&format!("wbuild {} {}", b.command, b.targets.join(" ")))
    );
    for (k, v) in [
        ("build", b.id.to_string()),
        ("outcome", b.outcome.clone().unwrap_or("unfinished".into())),
        ("started", utc(b.start_unix_ms)),
        ("wall time", wall),
        ("actions", actions),
        ("executed", b.executed.to_string()),
        ("failed", b.failed.to_string()),
        ("cache hit rate", percent(d.hit_rate)),
        (
            "critical path",
            if d.edges_recorded {
                format!(
                    "{} ms over {} actions",
                    d.critical_ms,
                    d.critical_path.len()
                )
            } else {
                "not recorded".to_owned()
            },
        ),
    ] {
        let _ = write!(
            h,
            "<div><dt>{}</dt><dd id=\"h-{}\">{}</dd></div>",
            escape_html(k),
            k.replace(' ', "-"),
            escape_html(&v)
        );
    }
    h.push_str("</dl></header>\n<main><div>\n");

    // Timeline.
    let span = (d.span_end_us - d.span_start_us).max(1);
    let pct = |us: u64| us as f64 * 100.0 / span as f64;
    h.push_str("<section><h2>Timeline</h2><div class=\"legend\">");
    for (st, name) in [
        ("executed", "executed"),
        ("cached", "cache hit"),
        ("remote_cached", "remote cache hit"),
        ("remote_executed", "remote executed"),
        ("failed", "failed"),
    ] {
        let _ = write!(h, "<span><i class=\"st-{st}\"></i>{name}</span>");
    }
    h.push_str("<span><i class=\"crit\" style=\"border:2px solid #f29d12;box-sizing:border-box\"></i>critical path</span></div>");
    if d.actions.iter().any(|a| !a.timed) {
        h.push_str("<p class=\"muted\">Some actions were recorded without start times (by an older wbuild): they are laid out one after another on slot 0.</p>");
    }
    h.push_str("<div class=\"axis\">");
    for t in 0..=4u64 {
        let us = d.span_start_us + span * t / 4;
        let _ = write!(
            h,
            "<span style=\"left:{:.2}%\">{}</span>",
            pct(us - d.span_start_us),
            ms_text(us)
        );
    }
    let _ = write!(
        h,
        "</div><div id=\"timeline\" class=\"timeline\" style=\"height:{}px\">",
        d.slots * ROW_PX
    );
    for s in 0..d.slots {
        let _ = write!(
            h,
            "<div class=\"slot\" style=\"top:{}px\">slot {s}</div>",
            s * ROW_PX
        );
    }
    for (i, a) in d.actions.iter().enumerate() {
        let label = escape_html(&a.label);
        let _ = write!(
            h,
            "<div class=\"bar st-{}{}\" id=\"action-{i}\" data-action=\"{i}\" data-label=\"{label}\" \
             title=\"{label} ({} {}, {})\" style=\"left:{:.3}%;width:{:.3}%;top:{}px\">{label}</div>",
            escape_html(&a.status),
            if a.critical { " crit" } else { "" },
            escape_html(&a.mnemonic),
            escape_html(&a.status),
            ms_text(a.duration_us),
            pct(a.start_us - d.span_start_us),
            pct(a.duration_us),
            a.slot * ROW_PX + 3
        );
    }
    h.push_str("</div></section>\n");

    // Failures.
    if !d.failures.is_empty() {
        let _ = write!(
            h,
            "<section id=\"failures\"><h2>Failures ({})</h2>",
            d.failures.len()
        );
        for &i in &d.failures {
            let a = &d.actions[i];
            let _ = write!(
                h,
                "<div class=\"failure\" data-action=\"{i}\"><b>{}</b> <span class=\"muted\">{}</span><pre>{}</pre></div>",
                escape_html(&a.label),
                escape_html(&a.mnemonic),
                escape_html(a.error.as_deref().unwrap_or("(no message was recorded)"))
            );
        }
        h.push_str("</section>\n");
    }

    // Critical path.
    h.push_str("<section id=\"critical-path\"><h2>Critical path</h2>");
    if !d.edges_recorded {
        h.push_str("<p class=\"muted\">This build was recorded without dependency edges; `wbuild log critical-path` in its workspace computes it from the build files.</p>");
    } else {
        h.push_str("<table><tr><th class=\"n\">ms</th><th>mnemonic</th><th>status</th><th>action</th></tr>");
        for &i in &d.critical_path {
            action_row(&mut h, i, &d.actions[i]);
        }
        h.push_str("</table>");
    }
    h.push_str("</section>\n");

    // Cache hit rate by mnemonic.
    h.push_str("<section id=\"mnemonics\"><h2>Cache hit rate by mnemonic</h2><table><tr><th>mnemonic</th><th class=\"n\">actions</th><th class=\"n\">hits</th><th class=\"n\">ran</th><th class=\"n\">failed</th><th class=\"n\">hit rate</th></tr>");
    for r in &d.mnemonics {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape_html(&r.mnemonic),
            r.actions,
            r.hits,
            r.executed,
            r.failed,
            percent(Some(r.hit_rate))
        );
    }
    h.push_str("</table></section>\n");

    // Slowest actions.
    h.push_str("<section id=\"slowest\"><h2>Slowest actions</h2><table><tr><th class=\"n\">ms</th><th>mnemonic</th><th>status</th><th>action</th></tr>");
    for &i in &d.slowest {
        action_row(&mut h, i, &d.actions[i]);
    }
    h.push_str("</table></section>\n");

    // Every action.
    let _ = write!(
        h,
        "<section id=\"all-actions\"><details><summary><h2 style=\"display:inline\">All {} actions</h2></summary><table><tr><th class=\"n\">ms</th><th>mnemonic</th><th>status</th><th>action</th></tr>",
        d.actions.len()
    );
    for (i, a) in d.actions.iter().enumerate() {
        action_row(&mut h, i, a);
    }
    h.push_str("</table></details></section>\n</div>\n");

    h.push_str("<aside id=\"details\"><h2>Details</h2><p class=\"muted\">Click an action (a bar or a row) to see its details and what it read and wrote.</p></aside>\n</main>\n");
    let _ = write!(
        h,
        "<script type=\"application/json\" id=\"report-data\">{json}</script>\n<script nonce=\"{nonce}\">{SCRIPT}</script>\n</body></html>\n"
    );
    h
}

fn action_row(h: &mut String, i: usize, a: &ActionView) {
    let _ = write!(
        h,
        "<tr data-action=\"{i}\"><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        ms_text(a.duration_us),
        escape_html(&a.mnemonic),
        escape_html(&a.status),
        escape_html(&a.label)
    );
}

/// The access summary of a recorded action, if the store holds its access log.
fn access_of(
    store: &Store,
    a: &ActionRecord,
) -> Result<Option<std::result::Result<AccessSummary, String>>> {
    if a.action_digest.is_empty() {
        return Ok(None);
    }
    let Ok(digest) = a.action_digest.parse::<Digest>() else {
        return Ok(Some(Err(format!(
            "the history holds a malformed action digest {:?}",
            a.action_digest
        ))));
    };
    let Some(json) = store.access_log(&digest)? else {
        return Ok(None);
    };
    Ok(Some(
        wbuild_exec_wasi::AccessLog::from_json(&json)
            .map(|log| AccessSummary::from_log(&log))
            .map_err(|e| format!("{e} (`wbuild cache verify` checks the store)")),
    ))
}

pub fn run(cli: &Cli, build: Option<u64>, html: &Path) -> Result<i32> {
    let store = super::open_store(&cli.cache_dir)?;
    let b = find_build(&store, build)?;
    let records = store.build_actions(b.id)?;
    let access = records
        .iter()
        .map(|a| access_of(&store, a))
        .collect::<Result<Vec<_>>>()?;
    let page = render(&shape(&b, &records, access));
    std::fs::write(html, page).with_context(|| {
        format!(
            "cannot write the report to {}: check that its directory exists and is writable, or pass another --html FILE",
            html.display()
        )
    })?;
    println!("{}: report written to {}", describe(&b), html.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> BuildRecord {
        BuildRecord {
            id: 7,
            command: "build".into(),
            targets: vec!["//...".into()],
            start_unix_ms: 1_700_000_000_000,
            end_unix_ms: Some(1_700_000_000_250),
            outcome: Some("failed".into()),
            executed: 2,
            cached: 2,
            failed: 1,
        }
    }

    fn rec(label: &str, mnemonic: &str, status: &str, start_ms: u64, ms: u64) -> ActionRecord {
        ActionRecord {
            label: label.into(),
            mnemonic: mnemonic.into(),
            action_digest: String::new(),
            status: status.into(),
            duration_ms: ms,
            start_us: Some(start_ms * 1000),
            duration_us: Some(ms * 1000),
            slot: Some(0),
            error: None,
            deps: Some(Vec::new()),
        }
    }

    fn records() -> Vec<ActionRecord> {
        vec![
            rec("//a:gen", "WasiRun", "executed", 10, 40),
            rec("//a:c lib/c.c", "CcCompile", "cached", 10, 1),
            ActionRecord {
                deps: Some(vec!["//a:c lib/c.c".into()]),
                slot: Some(1),
                ..rec("//a:c", "CcArchive", "remote_cached", 12, 2)
            },
            ActionRecord {
                deps: Some(vec!["//a:gen".into()]),
                error: Some("exit status 1\nno such file".into()),
                ..rec("//a:use", "WasiRun", "failed", 50, 5)
            },
            rec("//a:d lib/d.c", "CcCompile", "executed", 11, 30),
        ]
    }

    fn data() -> ReportData {
        let r = records();
        let n = r.len();
        shape(&build(), &r, vec![None; n])
    }

    #[test]
    fn hit_rate_by_mnemonic_counts_local_and_remote_hits() {
        let rows = hit_rate_by_mnemonic(&records());
        let summary: Vec<(&str, u64, u64, u64, u64)> = rows
            .iter()
            .map(|r| (r.mnemonic.as_str(), r.actions, r.hits, r.executed, r.failed))
            .collect();
        assert_eq!(
            summary,
            [
                ("CcArchive", 1, 1, 0, 0),
                ("CcCompile", 2, 1, 1, 0),
                ("WasiRun", 2, 0, 1, 1),
            ]
        );
        assert_eq!(rows[0].hit_rate, 1.0);
        assert_eq!(rows[1].hit_rate, 0.5);
        assert_eq!(rows[2].hit_rate, 0.0);
        assert!(hit_rate_by_mnemonic(&[]).is_empty());
    }

    #[test]
    fn shaping_finds_the_critical_path_the_slowest_and_the_failures() {
        let d = data();
        assert_eq!(d.hit_rate, Some(0.4));
        assert!(d.edges_recorded);
        // gen (40 ms) -> use (5 ms) beats d (30 ms) and c -> archive (3 ms).
        assert_eq!(d.critical_path, [0, 3]);
        assert_eq!(d.critical_ms, 45);
        assert_eq!(
            d.actions.iter().map(|a| a.critical).collect::<Vec<_>>(),
            [true, false, false, true, false]
        );
        assert_eq!(d.slowest, [0, 4, 3, 2, 1]);
        assert_eq!(d.failures, [3]);
        assert_eq!(
            (d.span_start_us, d.span_end_us, d.slots),
            (10_000, 55_000, 2)
        );
    }

    #[test]
    fn actions_recorded_without_times_are_laid_out_one_after_another() {
        let old = |label: &str, ms| ActionRecord {
            label: label.into(),
            mnemonic: "WasiRun".into(),
            status: "executed".into(),
            duration_ms: ms,
            ..ActionRecord::default()
        };
        let r = [old("//a:x", 3), old("//a:y", 4), old("//a:z", 1)];
        let d = shape(&build(), &r, vec![None, None, None]);
        let placed: Vec<(u64, u64, u64, bool)> = d
            .actions
            .iter()
            .map(|a| (a.start_us, a.duration_us, a.slot, a.timed))
            .collect();
        assert_eq!(
            placed,
            [
                (0, 3000, 0, false),
                (3000, 4000, 0, false),
                (7000, 1000, 0, false)
            ]
        );
        assert!(!d.edges_recorded);
        assert!(d.critical_path.is_empty());
        let page = render(&d);
        assert!(page.contains("recorded without dependency edges"));
        assert!(page.contains("without start times"));
    }

    #[test]
    fn a_no_op_build_without_records_takes_its_hit_rate_from_the_counters() {
        let b = BuildRecord {
            executed: 0,
            cached: 12,
            failed: 0,
            ..build()
        };
        let d = shape(&b, &[], Vec::new());
        assert_eq!(d.hit_rate, Some(1.0));
        let page = render(&d);
        assert!(page.contains("12 (a no-op build: all up to date)"));
        assert!(page.contains("id=\"timeline\""));
    }

    #[test]
    fn access_summaries_count_every_kind_and_list_the_first_paths() {
        use wbuild_exec_wasi::{AccessKind, AccessLog};
        let mut log = AccessLog::default();
        for i in 0..30 {
            log.record(AccessKind::Read, &format!("src/{i}.c"));
        }
        log.record(AccessKind::Write, "out/a.o");
        log.record(AccessKind::Missing, "include/gone.h");
        log.record(AccessKind::Stat, "src");
        let s = AccessSummary::from_log(&AccessLog::from_json(&log.to_json()).unwrap());
        assert_eq!(s.counts["read"], 30);
        assert_eq!((s.counts["write"], s.counts["missing"]), (1, 1));
        assert_eq!(s.counts["stat"], 1);
        assert_eq!(s.reads.len(), FIRST_PATHS);
        assert_eq!(s.reads[0], "src/0.c");
        assert_eq!(s.writes, ["out/a.o"]);
        assert_eq!(s.missing, ["include/gone.h"]);
        assert!(s.denied.is_empty());
    }

    const HOSTILE: &str = "</script><script>alert(1)</script><!--";

    #[test]
    fn hostile_labels_messages_and_paths_cannot_break_out_of_the_page() {
        let mut r = records();
        r[3].label = format!("//a:{HOSTILE}\"' onclick=alert(2) x=\"");
        r[3].error = Some(format!("{HOSTILE}\n<img src=x onerror=alert(3)>&amp;"));
        r[3].mnemonic = format!("Wasi{HOSTILE}");
        r[0].deps = Some(vec![HOSTILE.into()]);
        let access = AccessSummary {
            counts: BTreeMap::from([("read".to_owned(), 1)]),
            reads: vec![format!("{HOSTILE}\u{2028}")],
            ..AccessSummary::default()
        };
        let n = r.len();
        let mut acc = vec![None; n];
        acc[3] = Some(Ok(access));
        acc[1] = Some(Err(HOSTILE.to_owned()));
        let mut b = build();
        b.targets = vec![HOSTILE.to_owned()];
        b.command = HOSTILE.to_owned();
        let d = shape(&b, &r, acc);
        let page = render(&d);
        // Exactly the page's two script elements, and no markup from the data.
        assert_eq!(page.matches("<script").count(), 2, "{page}");
        assert_eq!(page.matches("</script>").count(), 2, "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<!--"), "{page}");
        // No quote ends an attribute in the markup (the JSON block keeps `'` as is: it
        // cannot end a script element).
        let markup = &page[..page.find("<script type=\"application/json\"").unwrap()];
        assert!(!markup.contains("\" onclick"), "{markup}");
        assert!(!markup.contains("' onclick"), "{markup}");
        assert!(page.contains("&quot;&#39; onclick=alert(2) x=&quot;"));
        assert!(!page.contains('\u{2028}'));
        // The data block is JSON that reads back exactly.
        let start = page.find("id=\"report-data\">").unwrap() + "id=\"report-data\">".len();
        let end = start + page[start..].find("</script>").unwrap();
        let back: serde_json::Value = serde_json::from_str(&page[start..end]).unwrap();
        assert_eq!(back["actions"][3]["label"], r[3].label.as_str());
        assert_eq!(back["actions"][3]["error"], r[3].error.as_deref().unwrap());
        assert_eq!(
            back["actions"][3]["access"]["Ok"]["reads"][0],
            format!("{HOSTILE}\u{2028}")
        );
        assert_eq!(back["actions"][1]["access"]["Err"], HOSTILE);
        assert_eq!(back["build"]["command"], HOSTILE);
        // The escaped texts are there for the reader.
        assert!(page.contains("&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;img src=x onerror=alert(3)&gt;&amp;amp;"));
    }

    #[test]
    fn the_page_names_no_url_and_runs_only_its_own_script() {
        let page = render(&data());
        for bad in [
            "http://", "https://", "src=", "href=", "url(", "@import", "//cdn", "<link", "<iframe",
            "<img",
        ] {
            assert!(!page.contains(bad), "the page contains {bad:?}");
        }
        let csp = "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-";
        assert!(page.contains(csp));
        let nonce_at = page.find("script-src 'nonce-").unwrap() + "script-src 'nonce-".len();
        let nonce = &page[nonce_at..nonce_at + 32];
        assert!(page.contains(&format!("<script nonce=\"{nonce}\">")));
    }

    #[test]
    fn every_action_has_a_timeline_bar_and_the_critical_path_is_marked() {
        let d = data();
        let page = render(&d);
        assert!(page.contains("id=\"timeline\""));
        for (i, a) in d.actions.iter().enumerate() {
            let bar = format!("id=\"action-{i}\" data-action=\"{i}\"");
            let at = page
                .find(&bar)
                .unwrap_or_else(|| panic!("no bar for {}", a.label));
            let open = page[..at].rfind("<div").unwrap();
            assert_eq!(
                page[open..at].contains(" crit\""),
                a.critical,
                "{}",
                &page[open..at + 80]
            );
            assert!(page[at..].contains(&escape_html(&a.label)));
        }
        assert!(page.contains("exit status 1\nno such file"));
        assert!(page.contains("<dd id=\"h-cache-hit-rate\">40.0%</dd>"));
        assert!(page.contains("<dd id=\"h-critical-path\">45 ms over 2 actions</dd>"));
        assert!(page.contains("2023-11-14 22:13:20 UTC"));
    }

    #[test]
    fn script_json_escapes_what_could_end_a_script_element() {
        let s = script_json(&serde_json::json!({"a": "</script><!-- & \u{2028}"}));
        assert_eq!(s, r#"{"a":"\u003c/script\u003e\u003c!-- \u0026 \u2028"}"#);
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["a"], "</script><!-- & \u{2028}");
    }
}
