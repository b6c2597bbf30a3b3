//! The report: `summary.json` for machines and `report.html` for people.
//!
//! [`summarize`] gathers what a reader needs first: the verdict, the run's
//! parameters, counts by outcome and operation, the fault windows and the
//! checkers' results (whose first anomaly lists the operations involved).
//! [`render_html`] turns a summary and its history into one self-contained
//! page: no scripts, no stylesheets or fonts from elsewhere, nothing fetched;
//! every piece of text from the history is escaped. Its timeline is an
//! inline SVG scatter plot of latency (log scale) against invoke time,
//! coloured by outcome, with the fault windows shaded and labelled and the
//! first anomaly's operations ringed.
//!
//! The plot draws at most [`PLOT_POINTS_MAX`] operations (an even sample of
//! longer histories, said so under the plot), so a long run still gives a
//! small page. [`write_report`] writes both files into a directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::check::{seconds, CheckResult, Validity, Workload};
use crate::fault::{fault_windows, FaultWindow};
use crate::history::{pair, HistoryError, Op, Operation, Outcome, Process};

/// Most operations drawn on the timeline; longer histories are sampled evenly.
pub const PLOT_POINTS_MAX: usize = 20_000;

/// The run that produced a history, as the runner knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The workload.
    pub workload: Workload,
    /// The nemeses enabled (e.g. `partition`, `kill`); empty for none.
    #[serde(default)]
    pub nemeses: Vec<String>,
    /// The seed that reproduces the run, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The run's planned duration in milliseconds, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Relaxed workload: the staleness budget in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_ms: Option<u64>,
    /// Relaxed workload: the clock-skew allowance in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_ms: Option<u64>,
    /// Where the history is, when it is a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_file: Option<String>,
    /// The negative control the nodes ran with (a deliberately broken build), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_control: Option<String>,
    /// How the nodes were networked (`netns`, `loopback`), when run by the runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The command that reproduces the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl RunInfo {
    /// A run of `workload` with nothing else known.
    pub fn new(workload: Workload) -> RunInfo {
        RunInfo {
            workload,
            nemeses: Vec::new(),
            seed: None,
            duration_ms: None,
            budget_ms: None,
            skew_ms: None,
            history_file: None,
            negative_control: None,
            network: None,
            command: None,
        }
    }
}

/// Counts over a history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryStats {
    /// Events (lines).
    pub events: u64,
    /// Client operations.
    pub operations: u64,
    /// Nemesis events.
    pub nemesis_events: u64,
    /// Time of the last event, in milliseconds since the run started.
    pub last_event_ms: u64,
    /// Client operations by outcome (`ok`, `fail`, `info`).
    pub by_outcome: BTreeMap<String, u64>,
    /// Client operations by `f`, then by outcome.
    pub by_f: BTreeMap<String, BTreeMap<String, u64>>,
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Version of the tool that wrote it.
    pub seam_jepsen: String,
    /// The overall verdict: `valid`, `invalid` or `unknown`.
    pub verdict: String,
    /// The run.
    pub run: RunInfo,
    /// Counts over the history.
    pub history: HistoryStats,
    /// When faults were active.
    pub fault_windows: Vec<FaultWindow>,
    /// The checkers' results.
    pub results: Vec<CheckResult>,
}

impl Summary {
    /// The combined verdict of all results (Invalid beats Unknown beats
    /// Valid); Unknown when no checker ran.
    pub fn validity(&self) -> Validity {
        if self.results.is_empty() {
            return Validity::Unknown { reason: "no checker ran".to_string() };
        }
        self.results.iter().fold(Validity::Valid, |acc, r| acc.and(r.valid.clone()))
    }
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The history could not be paired.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// A report file could not be written.
    #[error("{path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Summarizes a checked history. With no results the verdict is Unknown.
pub fn summarize(run: &RunInfo, ops: &[Op], results: &[CheckResult]) -> Result<Summary, HistoryError> {
    let operations = pair(ops)?;
    let mut stats = HistoryStats {
        events: ops.len() as u64,
        operations: operations.len() as u64,
        nemesis_events: ops.iter().filter(|op| op.process == Process::Nemesis).count() as u64,
        last_event_ms: ops.last().map_or(0, |op| op.time_ns / 1_000_000),
        ..HistoryStats::default()
    };
    for op in &operations {
        let outcome = op.outcome.as_str().to_string();
        *stats.by_outcome.entry(outcome.clone()).or_default() += 1;
        *stats.by_f.entry(op.f.clone()).or_default().entry(outcome).or_default() += 1;
    }
    let mut summary = Summary {
        seam_jepsen: env!("CARGO_PKG_VERSION").to_string(),
        verdict: String::new(),
        run: run.clone(),
        history: stats,
        fault_windows: fault_windows(ops),
        results: results.to_vec(),
    };
    summary.verdict = summary.validity().as_str().to_string();
    Ok(summary)
}

/// Writes `summary.json` and `report.html` into `dir` (created if needed).
pub fn write_report(
    dir: &Path,
    run: &RunInfo,
    ops: &[Op],
    results: &[CheckResult],
) -> Result<Summary, ReportError> {
    let summary = summarize(run, ops, results)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let json = serde_json::to_string_pretty(&summary).expect("a summary always serializes");
    let summary_path = dir.join("summary.json");
    fs::write(&summary_path, json + "\n").map_err(io(&summary_path))?;
    let html_path = dir.join("report.html");
    fs::write(&html_path, render_html(&summary, ops)).map_err(io(&html_path))?;
    Ok(summary)
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f5f5f5} td.n{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,monospace;font-size:.92em}
.verdict{display:inline-block;padding:.2em .8em;border-radius:4px;color:#fff;font-weight:bold;text-transform:uppercase}
.valid{background:#2a9d3a} .invalid{background:#c62828} .unknown{background:#b7791f}
.explain{background:#fff8e1;border-left:4px solid #b7791f;padding:.6em 1em;white-space:pre-wrap}
.muted{color:#777}
";

/// Renders the self-contained `report.html`.
pub fn render_html(summary: &Summary, ops: &[Op]) -> String {
    let mut html = String::new();
    let verdict = &summary.verdict;
    let title = format!("Seam Jepsen: {} — {}", summary.run.workload, verdict);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(&title)
    );
    let _ = writeln!(
        html,
        "<h1>Seam Jepsen report: {} workload</h1>\
         <p><span class=\"verdict {v}\">{v}</span></p>",
        escape(summary.run.workload.as_str()),
        v = escape(verdict)
    );
    run_section(&mut html, summary);
    results_section(&mut html, summary);
    counts_section(&mut html, &summary.history);
    anomaly_section(&mut html, summary);
    html.push_str("<h2>Timeline</h2>\n");
    match pair(ops) {
        Ok(operations) => {
            let ringed: Vec<u64> = summary
                .results
                .iter()
                .find_map(CheckResult::first_anomaly)
                .map(|a| a.ops.iter().map(|op| op.invoke_index).collect())
                .unwrap_or_default();
            html.push_str(&timeline_svg(&operations, &summary.fault_windows, &ringed));
        }
        Err(err) => {
            let _ = writeln!(html, "<p>No timeline: {}</p>", escape(&err.to_string()));
        }
    }
    windows_section(&mut html, &summary.fault_windows);
    let _ =
        writeln!(html, "<p class=\"muted\">seam-jepsen {}</p></body></html>", escape(&summary.seam_jepsen));
    html
}

fn row(html: &mut String, name: &str, value: &str) {
    let _ = writeln!(html, "<tr><th>{}</th><td>{}</td></tr>", escape(name), escape(value));
}

fn run_section(html: &mut String, summary: &Summary) {
    let run = &summary.run;
    html.push_str("<h2>Run</h2><table>\n");
    row(html, "workload", run.workload.as_str());
    let nemeses = if run.nemeses.is_empty() { "none".to_string() } else { run.nemeses.join(", ") };
    row(html, "nemeses", &nemeses);
    let unknown = || "not recorded".to_string();
    row(html, "seed", &run.seed.map_or_else(unknown, |s| s.to_string()));
    row(
        html,
        "duration",
        &run.duration_ms.map_or_else(
            || format!("{} ms (last event)", summary.history.last_event_ms),
            |d| format!("{d} ms"),
        ),
    );
    if let Some(budget) = run.budget_ms {
        row(html, "staleness budget", &format!("{budget} ms"));
    }
    if let Some(skew) = run.skew_ms {
        row(html, "clock-skew allowance", &format!("{skew} ms"));
    }
    if let Some(file) = &run.history_file {
        row(html, "history", file);
    }
    if let Some(control) = &run.negative_control {
        row(
            html,
            "negative control",
            &format!("{control} (a deliberately broken build: invalid is expected)"),
        );
    }
    if let Some(network) = &run.network {
        row(html, "network", network);
    }
    if let Some(command) = &run.command {
        row(html, "reproduce", command);
    }
    html.push_str("</table>\n");
}

fn results_section(html: &mut String, summary: &Summary) {
    html.push_str("<h2>Checkers</h2>\n");
    for result in &summary.results {
        let v = result.valid.as_str();
        let _ = write!(html, "<p><b>{}</b>: <span class=\"verdict {v}\">{v}</span>", escape(&result.checker));
        if let Validity::Unknown { reason } = &result.valid {
            let _ = write!(html, " — {}", escape(reason));
        }
        html.push_str("</p>\n");
        let c = &result.counts;
        let mut numbers: Vec<(String, u64)> = vec![
            ("operations".into(), c.operations),
            ("ok".into(), c.ok),
            ("fail".into(), c.fail),
            ("info".into(), c.info),
            ("keys".into(), c.keys),
            ("keys invalid".into(), c.keys_invalid),
            ("keys unknown".into(), c.keys_unknown),
            ("anomalies".into(), result.anomaly_count),
        ];
        numbers.extend(c.detail.iter().map(|(k, v)| (k.replace('_', " "), *v)));
        html.push_str("<table><tr>");
        for (name, _) in &numbers {
            let _ = write!(html, "<th>{}</th>", escape(name));
        }
        html.push_str("</tr>\n<tr>");
        for (_, n) in &numbers {
            let _ = write!(html, "<td class=\"n\">{n}</td>");
        }
        html.push_str("</tr></table>\n");
    }
}

fn counts_section(html: &mut String, stats: &HistoryStats) {
    html.push_str("<h2>Operations</h2>\n<table><tr><th>f</th>");
    let outcomes = [Outcome::Ok, Outcome::Fail, Outcome::Info];
    for o in outcomes {
        let _ = write!(html, "<th>{}</th>", o.as_str());
    }
    html.push_str("<th>total</th></tr>\n");
    let mut lines: Vec<(&str, &BTreeMap<String, u64>)> =
        stats.by_f.iter().map(|(f, m)| (f.as_str(), m)).collect();
    lines.push(("all", &stats.by_outcome));
    for (f, by_outcome) in lines {
        let _ = write!(html, "<tr><th>{}</th>", escape(f));
        let mut total = 0;
        for o in outcomes {
            let n = by_outcome.get(o.as_str()).copied().unwrap_or(0);
            total += n;
            let _ = write!(html, "<td class=\"n\">{n}</td>");
        }
        let _ = writeln!(html, "<td class=\"n\">{total}</td></tr>");
    }
    let _ = writeln!(
        html,
        "</table><p class=\"muted\">{} events, {} nemesis events.</p>",
        stats.events, stats.nemesis_events
    );
}

fn anomaly_section(html: &mut String, summary: &Summary) {
    let first =
        summary.results.iter().filter_map(|r| r.first_anomaly().map(|a| (r, a))).min_by_key(|(_, a)| a.at_ns);
    let Some((result, anomaly)) = first else {
        return;
    };
    let _ =
        writeln!(
            html,
            "<h2>First anomaly: {}{}</h2>\n<div class=\"explain\">{}</div>",
            escape(&serde_json::to_value(anomaly.kind).map_or_else(
                |_| format!("{:?}", anomaly.kind),
                |v| v.as_str().unwrap_or_default().to_string()
            )),
            anomaly.key.as_deref().map(|k| format!(" on key {}", escape(k))).unwrap_or_default(),
            escape(&anomaly.explanation)
        );
    html.push_str("<p>Operations involved (the first exposes the anomaly):</p>\n");
    ops_table(html, &anomaly.ops);
    if result.anomaly_count > 1 {
        let _ = writeln!(
            html,
            "<details><summary>{} anomalies in all ({} kept)</summary><ol>",
            result.anomaly_count,
            result.anomalies.len()
        );
        for a in &result.anomalies {
            let _ = writeln!(html, "<li class=\"mono\">{}</li>", escape(&a.explanation));
        }
        html.push_str("</ol></details>\n");
    }
}

fn ops_table(html: &mut String, ops: &[Operation]) {
    html.push_str(
        "<table class=\"mono\"><tr><th>invoke</th><th>complete</th><th>process</th><th>f</th>\
         <th>argument</th><th>outcome</th><th>result</th><th>error</th><th>node</th></tr>\n",
    );
    for op in ops {
        let complete = op.complete_ns.map_or_else(|| "never".to_string(), seconds);
        let shown = |v: &serde_json::Value| {
            if v.is_null() {
                String::new()
            } else {
                v.to_string()
            }
        };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            escape(&seconds(op.invoke_ns)),
            escape(&complete),
            op.process,
            escape(&op.f),
            escape(&shown(&op.invoke_value)),
            op.outcome.as_str(),
            escape(&shown(&op.value)),
            escape(op.error.as_deref().unwrap_or_default()),
            op.node.map(|n| n.to_string()).unwrap_or_default()
        );
    }
    html.push_str("</table>\n");
}

fn windows_section(html: &mut String, windows: &[FaultWindow]) {
    html.push_str("<h2>Fault windows</h2>\n");
    if windows.is_empty() {
        html.push_str("<p>None: no nemesis events.</p>\n");
        return;
    }
    html.push_str("<table><tr><th>fault</th><th>target</th><th>from</th><th>to</th></tr>\n");
    for w in windows {
        let end = match (w.point, w.end_ns) {
            (true, _) => "(event)".to_string(),
            (false, Some(end)) => seconds(end),
            (false, None) => "end of run".to_string(),
        };
        let target = if w.target.is_null() { String::new() } else { w.target.to_string() };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&w.kind),
            escape(&target),
            escape(&seconds(w.start_ns)),
            escape(&end)
        );
    }
    html.push_str("</table>\n");
}

/// Plot geometry, in SVG user units.
const PLOT_WIDTH: f64 = 960.0;
const PLOT_HEIGHT: f64 = 380.0;
const MARGIN_LEFT: f64 = 64.0;
const MARGIN_RIGHT: f64 = 16.0;
const MARGIN_TOP: f64 = 48.0;
const MARGIN_BOTTOM: f64 = 40.0;
/// Label rows above the plot for overlapping windows.
const WINDOW_LABEL_ROWS: usize = 3;

fn color(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "#2a9d3a",
        Outcome::Fail => "#c62828",
        Outcome::Info => "#f08c00",
    }
}

fn window_color(kind: &str) -> &'static str {
    match kind {
        "partition" => "#5c7cfa",
        "kill" => "#e03131",
        "pause" => "#ae3ec9",
        "latency" => "#1098ad",
        "skew" => "#f59f00",
        _ => "#868e96",
    }
}

/// A round "nice" step (1, 2 or 5 times a power of ten) giving at most
/// `ticks_max` ticks over `span`.
fn nice_step(span: f64, ticks_max: f64) -> f64 {
    let raw = (span / ticks_max).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * power).find(|step| *step >= raw).unwrap_or(10.0 * power)
}

/// The latency timeline: x = invoke time, y = latency (log scale), fault
/// windows shaded; operations whose invoke index is in `ringed` are ringed.
fn timeline_svg(operations: &[Operation], windows: &[FaultWindow], ringed: &[u64]) -> String {
    let end_ns = operations
        .iter()
        .map(|op| op.complete_ns.unwrap_or(op.invoke_ns))
        .chain(windows.iter().map(|w| w.end_ns.unwrap_or(w.start_ns)))
        .max()
        .unwrap_or(0)
        .max(1);
    let latencies_ms: Vec<f64> =
        operations.iter().filter_map(|op| op.latency_ns()).map(|ns| (ns as f64 / 1e6).max(1e-3)).collect();
    let lo = latencies_ms.iter().copied().fold(f64::INFINITY, f64::min).log10().floor();
    let hi = latencies_ms.iter().copied().fold(f64::NEG_INFINITY, f64::max).log10().ceil();
    let (lo, hi) =
        if lo.is_finite() && hi.is_finite() { (lo, if hi > lo { hi } else { lo + 1.0 }) } else { (0.0, 3.0) };
    let inner_w = PLOT_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let inner_h = PLOT_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let x = |ns: u64| MARGIN_LEFT + inner_w * (ns as f64 / end_ns as f64);
    let y = |ms: f64| MARGIN_TOP + inner_h * (hi - ms.max(1e-3).log10()) / (hi - lo);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {PLOT_WIDTH} {PLOT_HEIGHT}\" \
         width=\"100%\" role=\"img\" aria-label=\"latency over time\" \
         font-family=\"system-ui,sans-serif\" font-size=\"11\">"
    );
    // Fault windows under everything else.
    for (i, w) in windows.iter().enumerate() {
        let x0 = x(w.start_ns);
        let x1 = x(w.end_ns.unwrap_or(end_ns));
        let fill = window_color(&w.kind);
        let label = if w.target.is_null() { w.kind.clone() } else { format!("{} {}", w.kind, w.target) };
        let label_y = 12.0 + 12.0 * (i % WINDOW_LABEL_ROWS) as f64;
        if w.point {
            let _ = writeln!(
                svg,
                "<line x1=\"{x0:.1}\" x2=\"{x0:.1}\" y1=\"{label_y:.1}\" y2=\"{:.1}\" \
                 stroke=\"{fill}\" stroke-dasharray=\"3,2\"/>",
                MARGIN_TOP + inner_h
            );
        } else {
            let _ = writeln!(
                svg,
                "<rect x=\"{x0:.1}\" y=\"{MARGIN_TOP}\" width=\"{:.1}\" height=\"{inner_h}\" \
                 fill=\"{fill}\" fill-opacity=\"0.15\"/>",
                (x1 - x0).max(1.0)
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{label_y:.1}\" fill=\"{fill}\">{}</text>",
            x0 + 2.0,
            escape(&label)
        );
    }
    // Axes, ticks and grid.
    let _ = writeln!(
        svg,
        "<rect x=\"{MARGIN_LEFT}\" y=\"{MARGIN_TOP}\" width=\"{inner_w}\" height=\"{inner_h}\" \
         fill=\"none\" stroke=\"#999\"/>"
    );
    let mut decade = lo;
    while decade <= hi {
        let yy = y(10f64.powf(decade));
        let label = match decade as i64 {
            d if d < 0 => format!("{}ms", 10f64.powf(decade)),
            d if d < 3 => format!("{}ms", 10i64.pow(d as u32)),
            d => format!("{}s", 10i64.pow(d as u32 - 3)),
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{MARGIN_LEFT}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            MARGIN_LEFT + inner_w,
            MARGIN_LEFT - 4.0,
            yy + 4.0,
            escape(&label)
        );
        decade += 1.0;
    }
    let span_s = end_ns as f64 / 1e9;
    let step = nice_step(span_s, 10.0);
    let mut tick = 0.0;
    while tick <= span_s + step * 1e-9 {
        let xx = x((tick * 1e9) as u64);
        let _ = writeln!(
            svg,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\"/>\
             <text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}s</text>",
            MARGIN_TOP + inner_h,
            MARGIN_TOP + inner_h + 4.0,
            MARGIN_TOP + inner_h + 16.0,
            format_tick(tick, step)
        );
        tick += step;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">invoke time</text>\
         <text transform=\"translate(14,{:.1}) rotate(-90)\" text-anchor=\"middle\">latency</text>",
        MARGIN_LEFT + inner_w / 2.0,
        PLOT_HEIGHT - 6.0,
        MARGIN_TOP + inner_h / 2.0
    );
    // Points: an even sample when there are too many.
    let stride = operations.len().div_ceil(PLOT_POINTS_MAX).max(1);
    let mut drawn = 0usize;
    for (i, op) in operations.iter().enumerate() {
        let is_ringed = ringed.contains(&op.invoke_index);
        if i % stride != 0 && !is_ringed {
            continue;
        }
        drawn += 1;
        let cx = x(op.invoke_ns);
        let (cy, shape) = match op.latency_ns() {
            Some(ns) => (y(ns as f64 / 1e6), "circle"),
            // Never completed: on the top edge, as a triangle.
            None => (MARGIN_TOP, "triangle"),
        };
        let fill = color(op.outcome);
        if shape == "circle" {
            let _ = write!(
                svg,
                "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"2\" fill=\"{fill}\" fill-opacity=\"0.7\"/>"
            );
        } else {
            let _ = write!(svg, "<path d=\"M{:.1},{:.1}l3,-6h-6z\" fill=\"{fill}\"/>", cx, cy);
        }
        if is_ringed {
            let _ = write!(
                svg,
                "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"6\" fill=\"none\" stroke=\"#000\" \
                 stroke-width=\"1.5\"><title>{}</title></circle>",
                escape(&format!("{} {} by process {}", op.f, op.outcome.as_str(), op.process))
            );
        }
        svg.push('\n');
    }
    svg.push_str("</svg>\n");
    let legend = format!(
        "<p class=\"muted\"><span style=\"color:{}\">●</span> ok \
         <span style=\"color:{}\">●</span> fail <span style=\"color:{}\">●</span> info \
         (▲ on the top edge: never completed) ○ first anomaly's operations. \
         Shaded: fault windows. {}</p>\n",
        color(Outcome::Ok),
        color(Outcome::Fail),
        color(Outcome::Info),
        if drawn < operations.len() {
            format!("Showing {drawn} of {} operations (an even sample).", operations.len())
        } else {
            format!("All {} operations shown.", operations.len())
        }
    );
    svg + &legend
}

fn format_tick(tick: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{tick:.0}")
    } else {
        let decimals = (-step.log10()).ceil() as usize;
        format!("{tick:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{check_history, CheckConfig};
    use crate::history::OpType;
    use serde_json::json;

    fn ev(index: u64, ms: u64, process: Process, kind: OpType, f: &str, value: serde_json::Value) -> Op {
        Op {
            index,
            time_ns: ms * 1_000_000,
            process,
            kind,
            f: f.to_string(),
            key: (process != Process::Nemesis).then(|| "k<1>".to_string()),
            value,
            error: None,
            node: None,
        }
    }

    fn sample() -> Vec<Op> {
        let c = Process::Client;
        vec![
            ev(0, 0, c(1), OpType::Invoke, "write", json!(1)),
            ev(1, 3, c(1), OpType::Ok, "write", json!(1)),
            ev(2, 10, Process::Nemesis, OpType::Info, "start-partition", json!("<script>")),
            ev(3, 20, c(1), OpType::Invoke, "write", json!(2)),
            ev(4, 25, c(1), OpType::Ok, "write", json!(2)),
            ev(5, 30, c(2), OpType::Invoke, "read", json!(null)),
            ev(6, 900, c(2), OpType::Ok, "read", json!(1)),
            ev(7, 950, c(3), OpType::Invoke, "write", json!(3)),
            ev(8, 1000, Process::Nemesis, OpType::Info, "stop-partition", json!("<script>")),
        ]
    }

    #[test]
    fn report_shows_verdict_anomaly_and_windows_escaped() {
        let ops = sample();
        let result = check_history(Workload::Register, &ops, &CheckConfig::default()).expect("checks");
        assert_eq!(result.valid, Validity::Invalid);
        let mut run = RunInfo::new(Workload::Register);
        run.seed = Some(42);
        run.nemeses = vec!["partition".to_string()];
        let summary = summarize(&run, &ops, &[result]).expect("summarizes");
        assert_eq!(summary.verdict, "invalid");
        assert_eq!(summary.history.operations, 4);
        assert_eq!(summary.history.by_f["write"]["info"], 1);
        assert_eq!(summary.fault_windows.len(), 1);
        let html = render_html(&summary, &ops);
        assert!(html.contains("verdict invalid"));
        assert!(html.contains("First anomaly: nonlinearizable on key k&lt;1&gt;"), "key escaped");
        assert!(html.contains("partition &quot;&lt;script&gt;&quot;"), "window label escaped");
        assert!(!html.contains("<script"), "nothing unescaped from the history");
        assert!(html.contains("<svg"));
        assert!(html.contains("<rect x="), "window shaded");
        assert!(html.contains("stroke=\"#000\""), "anomaly ringed");
        assert!(html.contains("All 4 operations shown"));
        for external in ["http://", "https://", "src="] {
            let outside_svg_ns = html.replace("http://www.w3.org/2000/svg", "");
            assert!(!outside_svg_ns.contains(external), "self-contained: {external}");
        }
    }

    #[test]
    fn report_files_are_written() {
        let ops = sample();
        let result = check_history(Workload::Register, &ops, &CheckConfig::default()).expect("checks");
        let dir = std::env::temp_dir().join(format!("seam-jepsen-report-{}", std::process::id()));
        let summary = write_report(&dir, &RunInfo::new(Workload::Register), &ops, &[result]).expect("writes");
        let json = fs::read_to_string(dir.join("summary.json")).expect("summary written");
        let back: Summary = serde_json::from_str(&json).expect("summary parses");
        assert_eq!(back, summary);
        assert!(dir.join("report.html").exists());
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn unclosed_window_extends_to_the_end() {
        let mut ops = sample();
        ops.pop();
        let windows = fault_windows(&ops);
        assert_eq!(windows[0].end_ns, None);
        let svg = timeline_svg(&pair(&ops).expect("pairs"), &windows, &[]);
        // The run ends at 950 ms; the window starts at 10 ms.
        let inner_w = PLOT_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
        let expected = inner_w * (940.0 / 950.0);
        assert!(svg.contains(&format!("width=\"{expected:.1}\"")), "{svg}");
    }

    #[test]
    fn nice_steps_are_round() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(nice_step(10.0, 10.0), 1.0));
        assert!(close(nice_step(33.0, 10.0), 5.0));
        assert!(close(nice_step(0.9, 10.0), 0.1));
        assert_eq!(format_tick(0.30000000000000004, 0.1), "0.3");
    }
}
