//! What a dashboard shows, and the page that shows it, rendered on the server: the figures, the
//! charts (inline SVG with their axes) and the legend are in the HTML the first answer carries,
//! so the page reads the same with its script off. The script only re-fetches the page and
//! swaps its `<main>` every [`REFRESH_SECONDS`].
//!
//! Owns: turning the gathered figures into text ([`View::render`], [`View::to_json`]), the
//! charts' scales (pure functions, tested below) and the escaping of everything that comes from
//! outside (ids, names, method names, the provider's name and logo URL, what a node answered).
//! Must not: do I/O (`mod.rs` gathers the figures).

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::store::{UsageCounts, UsageRow};
use crate::telemetry::Latency;

/// How often the page fetches itself again.
pub(super) const REFRESH_SECONDS: u32 = 15;
/// Minutes in the "last hour" chart.
pub(super) const MINUTES: usize = 60;
/// Hours in the "last 24 hours" chart (the current hour included).
pub(super) const HOURS: usize = 24;
/// Bindings and methods listed (the rest are summed in the totals only).
pub(super) const TOP: usize = 20;
/// Validator keys listed.
pub(super) const MAX_KEYS_SHOWN: usize = 100;

/// The outcome classes, grouped as the page shows them (indexes into `UsageCounts::outcomes`:
/// ok, error, refused, limit, plugin_failure, upstream_error, internal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Outcomes {
    /// Answered by the node with a result (or by a plugin, such as a cache hit).
    pub answered: u64,
    /// Answered with an error that is the call's own: the node's error answer (a revert), an
    /// unknown method, a malformed call.
    pub call_errors: u64,
    /// Refused by a rule the customer or operator set: a rate limit, an allowlist, a method rule.
    pub refused_rule: u64,
    /// Refused by a limit of the plan: a quota, a size or connection limit.
    pub refused_limit: u64,
    /// Failed in a plugin (trap, time or memory budget).
    pub failed_plugin: u64,
    /// Failed at the node (unreachable, too slow, failed mid-answer).
    pub failed_node: u64,
    /// Failed in ovsb itself.
    pub failed_internal: u64,
}

impl Outcomes {
    pub(super) fn of(counts: &UsageCounts) -> Outcomes {
        let o = counts.outcomes;
        Outcomes {
            answered: o[0],
            call_errors: o[1],
            refused_rule: o[2],
            refused_limit: o[3],
            failed_plugin: o[4],
            failed_node: o[5],
            failed_internal: o[6],
        }
    }

    fn refused(&self) -> u64 {
        self.refused_rule + self.refused_limit
    }

    fn failed(&self) -> u64 {
        self.failed_plugin + self.failed_node + self.failed_internal
    }

    /// The stacked series of a chart's bar, bottom first, as [`SERIES`] names them.
    fn stack(&self) -> [u64; 4] {
        [self.answered, self.call_errors, self.refused(), self.failed()]
    }
}

/// The chart's series: (CSS class, legend text), bottom of the stack first.
const SERIES: [(&str, &str); 4] = [
    ("answered", "Answered"),
    ("call-errors", "Call errors (the call's own: a revert, an unknown method)"),
    ("refused", "Refused by rules and limits (rate limit, allowlist, quota)"),
    ("failed", "Failed (plugin, node)"),
];

/// One instance's usage: what the store holds plus what this replica has not flushed yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct UsageView {
    /// The first minute of the last-hour chart (minutes since the Unix epoch).
    pub minute_from: i64,
    /// [`MINUTES`] buckets, oldest first.
    pub per_minute: Vec<UsageCounts>,
    /// The first minute of the first hour of the 24-hour chart.
    pub hour_from: i64,
    /// [`HOURS`] buckets, oldest first.
    pub per_hour: Vec<UsageCounts>,
    /// The bindings with the most calls over the 24 hours, most first; at most [`TOP`].
    pub bindings: Vec<(String, UsageCounts)>,
    /// Whether bindings were left out of `bindings`.
    pub more_bindings: bool,
    /// The methods with the most calls over the 24 hours, most first; at most [`TOP`].
    pub methods: Vec<(String, UsageCounts)>,
    /// Whether methods were left out of `methods`.
    pub more_methods: bool,
}

/// What the store gave for one instance (see `mod.rs`), before the unflushed rows are added.
pub(super) struct StoredUsage {
    pub per_minute: Vec<(i64, UsageCounts)>,
    pub per_hour: Vec<(i64, UsageCounts)>,
    pub bindings: Vec<(String, UsageCounts)>,
    pub methods: Vec<(String, UsageCounts)>,
}

/// The windows of a dashboard read at minute `now_minute`: (first minute of the last-hour chart,
/// first minute of the 24-hour chart, the minute after the current one).
pub(super) fn windows(now_minute: i64) -> (i64, i64, i64) {
    let minute_from = now_minute - (MINUTES as i64 - 1);
    let hour_from = now_minute.div_euclid(60) * 60 - (HOURS as i64 - 1) * 60;
    (minute_from, hour_from, now_minute + 1)
}

impl UsageView {
    /// The view at minute `now_minute` of `stored` plus `pending` (rows this replica has not
    /// flushed; rows outside the windows are left out).
    pub(super) fn assemble(now_minute: i64, stored: StoredUsage, pending: &[UsageRow]) -> UsageView {
        let (minute_from, hour_from, end) = windows(now_minute);
        let mut per_minute = vec![UsageCounts::default(); MINUTES];
        let mut per_hour = vec![UsageCounts::default(); HOURS];
        for (minute, counts) in &stored.per_minute {
            if (minute_from..end).contains(minute) {
                per_minute[(minute - minute_from) as usize].add(counts);
            }
        }
        // The store's hour buckets are keyed by their first minute.
        for (minute, counts) in &stored.per_hour {
            if (hour_from..end).contains(minute) {
                per_hour[((minute - hour_from) / 60) as usize].add(counts);
            }
        }
        let mut bindings = stored.bindings;
        let mut methods = stored.methods;
        for row in pending {
            if (minute_from..end).contains(&row.minute) {
                per_minute[(row.minute - minute_from) as usize].add(&row.counts);
            }
            if (hour_from..end).contains(&row.minute) {
                per_hour[((row.minute - hour_from) / 60) as usize].add(&row.counts);
                add_to(&mut bindings, &row.binding_id, &row.counts);
                add_to(&mut methods, &row.method, &row.counts);
            }
        }
        let (bindings, more_bindings) = top(bindings);
        let (methods, more_methods) = top(methods);
        UsageView { minute_from, per_minute, hour_from, per_hour, bindings, more_bindings, methods, more_methods }
    }

    /// The sums over the 24 hours.
    pub(super) fn totals(&self) -> UsageCounts {
        let mut total = UsageCounts::default();
        for counts in &self.per_hour {
            total.add(counts);
        }
        total
    }
}

fn add_to(list: &mut Vec<(String, UsageCounts)>, name: &str, counts: &UsageCounts) {
    match list.iter_mut().find(|(n, _)| n == name) {
        Some((_, existing)) => existing.add(counts),
        None => list.push((name.to_string(), *counts)),
    }
}

/// The [`TOP`] entries with the most calls (ties by name), and whether any were left out.
fn top(mut list: Vec<(String, UsageCounts)>) -> (Vec<(String, UsageCounts)>, bool) {
    list.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then_with(|| a.0.cmp(&b.0)));
    let more = list.len() > TOP;
    list.truncate(TOP);
    (list, more)
}

/// The instance's node, as the dashboard found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NodeStatus {
    /// This replica does not serve the instance (not ready, or being changed).
    NotServed,
    /// The node answered: its head block, and its sync progress `(current, highest)` when it
    /// says it is syncing.
    Head { block: u64, syncing: Option<(u64, u64)> },
    /// The node did not answer within the bound.
    TimedOut { ms: u64 },
    /// The node could not be reached or answered with an error (what it said is not shown: a
    /// node's URL may carry a provider's key).
    Unreachable,
}

/// A validator instance's beacon node, as the dashboard found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BeaconStatus {
    /// The validator client is not running here (or has not written its token yet).
    NotRunning,
    /// The beacon API answered: its head slot, whether it is syncing, and the epoch.
    Head { slot: u64, epoch: u64, syncing: bool },
    /// The beacon API did not answer within the bound.
    TimedOut { ms: u64 },
    /// The beacon API could not be reached or answered with an error.
    Unreachable,
}

/// One validator key, with what the beacon node and the keymanager say about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KeyView {
    /// The public key (`0x` + 96 hex digits).
    pub pubkey: String,
    /// Its index on the chain, once the beacon node knows it.
    pub index: Option<u64>,
    /// The beacon node's status (`active_ongoing`, `pending_queued`, …).
    pub status: Option<String>,
    /// Its balance, in gwei.
    pub balance_gwei: Option<u64>,
    /// Its fee recipient, as the keymanager reports it.
    pub fee_recipient: Option<String>,
    /// Its attestation duty in the current epoch: the slot.
    pub attestation_slot: Option<u64>,
    /// Whether the beacon node saw it live (attesting) in the previous epoch.
    pub live_previous_epoch: Option<bool>,
}

/// A validator instance's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ValidatorView {
    /// The fee recipient the instance was given (its parameters).
    pub fee_recipient: Option<String>,
    /// The beacon node.
    pub beacon: BeaconStatus,
    /// The keys, in the order the instance lists them; at most [`MAX_KEYS_SHOWN`].
    pub keys: Vec<KeyView>,
    /// Keys not listed.
    pub more_keys: usize,
}

/// Everything one dashboard shows.
pub(super) struct View {
    pub provider_name: String,
    pub logo_url: Option<String>,
    pub instance_id: String,
    pub plan: String,
    pub state: String,
    /// The chain: (plugin, fail-open).
    pub chain: Vec<(String, bool)>,
    /// When the figures were read (ms since the Unix epoch).
    pub now_ms: i64,
    /// `None` when the store could not be read.
    pub usage: Option<UsageView>,
    pub latency: Option<Latency>,
    /// (hits, misses) of the plugin named `cache`, when the chain has one.
    pub cache: Option<(u64, u64)>,
    pub node: NodeStatus,
    pub validator: Option<ValidatorView>,
}

/// `text` with `& < > " '` escaped, for HTML text and attribute values (SVG too).
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `n` with thousands separated by commas.
pub(super) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A tick label: `950`, `1.5k`, `12k`, `3.2M`.
fn compact(n: u64) -> String {
    let short = |value: f64, unit: &str| {
        if value < 10.0 && (value * 10.0).round() % 10.0 != 0.0 {
            format!("{value:.1}{unit}")
        } else {
            format!("{}{unit}", value.round())
        }
    };
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => short(n as f64 / 1e3, "k"),
        _ => short(n as f64 / 1e6, "M"),
    }
}

/// The y-axis ticks of a chart whose tallest bar is `max`: 0 and whole multiples of a step of
/// 1, 2 or 5 × 10ⁿ, at most 5 intervals, the last at or above `max`. Never a repeated label.
pub(super) fn ticks(max: u64) -> Vec<u64> {
    let max = max.max(1);
    let mut step = 1u64;
    loop {
        let mut found = None;
        for m in [1, 2, 5] {
            let candidate = step.saturating_mul(m);
            if candidate.saturating_mul(5) >= max {
                found = Some(candidate);
                break;
            }
        }
        if let Some(step) = found {
            let top = max.div_ceil(step).saturating_mul(step);
            return (0..=top / step).map(|i| i * step).collect();
        }
        step = step.saturating_mul(10);
    }
}

/// `HH:MM` (UTC) of a minute since the Unix epoch.
fn clock(minute: i64) -> String {
    let of_day = minute.rem_euclid(1440);
    format!("{:02}:{:02}", of_day / 60, of_day % 60)
}

/// A stacked-bar chart of `buckets` (the first at `from`, each `step` minutes long): y-axis
/// ticks, x-axis labels every `label_every` minutes (clock time, UTC), one `<title>` per bar.
fn chart(buckets: &[UsageCounts], from: i64, step: i64, label_every: i64, what: &str) -> String {
    const W: f64 = 640.0;
    const H: f64 = 210.0;
    const LEFT: f64 = 48.0;
    const RIGHT: f64 = 24.0;
    const TOP: f64 = 16.0;
    const BOTTOM: f64 = 24.0;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let max = buckets.iter().map(|c| c.calls).max().unwrap_or(0);
    let ticks = ticks(max);
    let top = *ticks.last().unwrap_or(&1) as f64;
    let y = |value: f64| TOP + plot_h - plot_h * value / top;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}" preserveAspectRatio="xMidYMid meet">"#,
        escape(what)
    );
    for tick in &ticks {
        let at = y(*tick as f64);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{at:.1}" y2="{at:.1}"/><text class="y" x="{}" y="{:.1}">{}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            at + 4.0,
            compact(*tick)
        );
    }
    let slot = plot_w / buckets.len().max(1) as f64;
    let bar = (slot * 0.78).max(1.0);
    for (i, counts) in buckets.iter().enumerate() {
        let start = from + i as i64 * step;
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        if start.rem_euclid(label_every) == 0 {
            let _ = write!(
                svg,
                r#"<line class="tick" x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}"/><text class="x" x="{0:.1}" y="{3}">{4}</text>"#,
                x + bar / 2.0,
                TOP + plot_h,
                TOP + plot_h + 4.0,
                H - 6.0,
                clock(start)
            );
        }
        if counts.calls == 0 {
            continue;
        }
        let outcomes = Outcomes::of(counts);
        let stack = outcomes.stack();
        let mut tip = format!("{} UTC: {} calls", clock(start), grouped(counts.calls));
        for ((_, name), n) in SERIES.iter().zip(stack) {
            if n > 0 {
                let short = name.split(" (").next().unwrap_or(name);
                let _ = write!(tip, ", {} {}", grouped(n), short.to_lowercase());
            }
        }
        let _ = write!(svg, "<g><title>{}</title>", escape(&tip));
        let mut base = 0.0;
        for ((class, _), n) in SERIES.iter().zip(stack) {
            if n == 0 {
                continue;
            }
            let (y1, y0) = (y(base + n as f64), y(base));
            let _ = write!(
                svg,
                r#"<rect class="{class}" x="{x:.1}" y="{y1:.1}" width="{bar:.1}" height="{:.1}"/>"#,
                (y0 - y1).max(0.5)
            );
            base += n as f64;
        }
        svg.push_str("</g>");
    }
    let _ = write!(svg, r#"<line class="axis" x1="{LEFT}" x2="{}" y1="{1}" y2="{1}"/></svg>"#, W - RIGHT, TOP + plot_h);
    svg
}

/// The legend under a chart, with each series' total over the chart.
fn legend(buckets: &[UsageCounts]) -> String {
    let mut sums = [0u64; 4];
    for counts in buckets {
        for (sum, n) in sums.iter_mut().zip(Outcomes::of(counts).stack()) {
            *sum += n;
        }
    }
    let mut out = String::from(r#"<ul class="legend">"#);
    for ((class, name), n) in SERIES.iter().zip(sums) {
        let _ = write!(out, r#"<li><span class="swatch {class}"></span>{} <b>{}</b></li>"#, escape(name), grouped(n));
    }
    out.push_str("</ul>");
    out
}

/// A table of usage rows (bindings or methods).
fn usage_table(title: &str, column: &str, rows: &[(String, UsageCounts)], more: bool, class: &str) -> String {
    let mut out = format!(
        r#"<section class="wide"><h2>{}</h2><div class="scroll"><table class="usage {class}"><thead><tr><th>{}</th><th>Calls</th><th>Compute units</th><th>Answered</th><th>Refused</th><th>Failed</th></tr></thead><tbody>"#,
        escape(title),
        escape(column)
    );
    for (name, counts) in rows {
        let o = Outcomes::of(counts);
        let _ = write!(
            out,
            r#"<tr><td class="id">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            escape(name),
            grouped(counts.calls),
            grouped(counts.compute_units),
            grouped(o.answered + o.call_errors),
            grouped(o.refused()),
            grouped(o.failed())
        );
    }
    out.push_str("</tbody></table></div>");
    if more {
        let _ = write!(out, r#"<p class="muted">The {TOP} with the most calls; the totals above count all.</p>"#);
    }
    out.push_str("</section>");
    out
}

/// A duration in seconds as `0.8 ms`, `12 ms`, `1.2 s`.
fn duration(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{seconds:.1} s")
    }
}

/// A balance in gwei as ETH with up to 4 decimals.
fn ether(gwei: u64) -> String {
    let whole = gwei / 1_000_000_000;
    let fraction = (gwei % 1_000_000_000) / 100_000;
    if fraction == 0 {
        format!("{} ETH", grouped(whole))
    } else {
        let text = format!("{fraction:04}");
        format!("{}.{} ETH", grouped(whole), text.trim_end_matches('0'))
    }
}

/// A UTC time stamp `2026-12-07 21:30:05 UTC` of ms since the Unix epoch.
fn timestamp(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let (y, m, d) = crate::usage::civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", of_day / 3600, of_day % 3600 / 60, of_day % 60)
}

fn card(title: &str, value: &str, note: &str, class: &str) -> String {
    format!(
        r#"<div class="card {class}"><div class="label">{}</div><div class="value">{value}</div><div class="note">{note}</div></div>"#,
        escape(title)
    )
}

impl View {
    /// The whole page.
    pub(super) fn render(&self) -> String {
        let mut page = String::with_capacity(32 << 10);
        let title = format!("{} · {}", self.provider_name, self.instance_id);
        let _ = write!(
            page,
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{}</title><style>{STYLE}</style></head>
<body><header><div class="brand">"#,
            escape(&title)
        );
        if let Some(logo) = &self.logo_url {
            let _ = write!(page, r#"<img class="logo" src="{}" alt="" referrerpolicy="no-referrer">"#, escape(logo));
        }
        let _ = write!(
            page,
            r#"<span class="provider">{}</span></div><h1>instance <span id="instance">{}</span></h1></header>"#,
            escape(&self.provider_name),
            escape(&self.instance_id)
        );
        page.push_str("<main>");
        page.push_str(&self.main());
        page.push_str("</main>");
        let _ = writeln!(
            page,
            "<script>{}</script></body></html>",
            SCRIPT.replace("{{REFRESH_MS}}", &(REFRESH_SECONDS * 1000).to_string())
        );
        page
    }

    /// The inside of `<main>` (what the script swaps in at each refresh).
    fn main(&self) -> String {
        let mut out = String::new();
        let state_class = match self.state.as_str() {
            "ready" => "ready",
            "failed" => "failed",
            _ => "other",
        };
        out.push_str(r#"<div class="cards">"#);
        out.push_str(&card(
            "State",
            &format!(r#"<span id="state" class="state {state_class}">{}</span>"#, escape(&self.state)),
            &format!(r#"plan <span id="plan">{}</span>"#, escape(&self.plan)),
            "",
        ));
        let totals = self.usage.as_ref().map(UsageView::totals);
        match &totals {
            Some(t) => {
                out.push_str(&card("Calls, 24 h", &format!(r#"<span id="calls">{}</span>"#, grouped(t.calls)), "", ""));
                out.push_str(&card(
                    "Compute units, 24 h",
                    &format!(r#"<span id="compute-units">{}</span>"#, grouped(t.compute_units)),
                    "",
                    "",
                ));
            }
            None => out.push_str(&card("Usage", "unavailable", "the store did not answer; try again shortly", "")),
        }
        out.push_str(&self.latency_card());
        out.push_str(&self.cache_card());
        out.push_str(&self.node_card());
        out.push_str("</div>");

        if let Some(validator) = &self.validator {
            out.push_str(&validator_section(validator));
        }

        match (&self.usage, &totals) {
            (Some(usage), Some(totals)) if totals.calls > 0 => {
                out.push_str(&outcomes_section(totals));
                let _ = write!(
                    out,
                    r#"<section class="wide"><h2>Calls per minute, last hour <span class="muted">(UTC)</span></h2>{}{}</section>"#,
                    chart(&usage.per_minute, usage.minute_from, 1, 10, "calls per minute over the last hour"),
                    legend(&usage.per_minute)
                );
                let _ = write!(
                    out,
                    r#"<section class="wide"><h2>Calls per hour, last 24 hours <span class="muted">(UTC)</span></h2>{}{}</section>"#,
                    chart(&usage.per_hour, usage.hour_from, 60, 360, "calls per hour over the last 24 hours"),
                    legend(&usage.per_hour)
                );
                out.push_str(&usage_table(
                    "Bindings, last 24 hours",
                    "Binding",
                    &usage.bindings,
                    usage.more_bindings,
                    "bindings",
                ));
                out.push_str(&usage_table(
                    "Methods, last 24 hours",
                    "Method",
                    &usage.methods,
                    usage.more_methods,
                    "methods",
                ));
            }
            (Some(_), _) => out.push_str(
                r#"<section class="wide"><h2>Calls</h2><p class="empty" id="no-calls">No calls yet</p><p class="muted">in the last 24 hours. Calls made with this instance's credentials show here within seconds.</p></section>"#,
            ),
            (None, _) => {}
        }

        out.push_str(r#"<section class="wide"><h2>Plugin chain</h2>"#);
        if self.chain.is_empty() {
            out.push_str(r#"<p class="muted" id="nochain">No plugins: calls go straight to the node.</p>"#);
        } else {
            out.push_str(r#"<ol id="chain">"#);
            for (name, fail_open) in &self.chain {
                let _ = write!(out, "<li>{}{}</li>", escape(name), if *fail_open { " (fail-open)" } else { "" });
            }
            out.push_str("</ol>");
        }
        out.push_str("</section>");
        let _ = write!(
            out,
            r#"<p class="muted footer">Figures as of <time id="updated">{}</time>; history is kept by the store, latency and cache since this process started. Refreshed every {REFRESH_SECONDS} s.</p>"#,
            timestamp(self.now_ms)
        );
        out
    }

    fn latency_card(&self) -> String {
        match &self.latency {
            Some(l) => card(
                "Latency",
                &format!(
                    r#"p50 <span id="p50">{}</span> · p99 <span id="p99">{}</span>"#,
                    duration(l.p50),
                    duration(l.p99)
                ),
                &format!("{} calls since this process started", grouped(l.calls)),
                "",
            ),
            None => card("Latency", "–", "no call since this process started", ""),
        }
    }

    fn cache_card(&self) -> String {
        match self.cache {
            Some((hits, misses)) if hits + misses > 0 => card(
                "Cache hits",
                &format!(r#"<span id="cache">{:.0}%</span>"#, 100.0 * hits as f64 / (hits + misses) as f64),
                &format!("{} of {} calls answered by the cache", grouped(hits), grouped(hits + misses)),
                "",
            ),
            Some(_) => card("Cache hits", "–", "no call has reached the cache yet", ""),
            None => card("Cache hits", "–", "no cache plugin in the chain", ""),
        }
    }

    fn node_card(&self) -> String {
        match &self.node {
            NodeStatus::Head { block, syncing: None } => card(
                "Node",
                &format!(r#"block <span id="head">{}</span>"#, grouped(*block)),
                r#"<span id="sync" class="ok">in sync</span>"#,
                "",
            ),
            NodeStatus::Head { block, syncing: Some((current, highest)) } => card(
                "Node",
                &format!(r#"block <span id="head">{}</span>"#, grouped(*block)),
                &format!(
                    r#"<span id="sync" class="warn">syncing: {} of {}</span>"#,
                    grouped(*current),
                    grouped(*highest)
                ),
                "",
            ),
            NodeStatus::TimedOut { ms } => {
                card("Node", r#"<span id="sync" class="warn">no answer</span>"#, &format!("within {ms} ms"), "")
            }
            NodeStatus::Unreachable => card(
                "Node",
                r#"<span id="sync" class="bad">unreachable</span>"#,
                "it could not be reached or answered with an error",
                "",
            ),
            NodeStatus::NotServed => card("Node", "–", "the instance is not served right now", ""),
        }
    }

    /// The figures as JSON (`/dashboard/{id}/data`).
    pub(super) fn to_json(&self, traffic: &[(u64, u64, u64)]) -> Value {
        let counts = |c: &UsageCounts| {
            let o = Outcomes::of(c);
            json!({
                "calls": c.calls, "compute_units": c.compute_units, "answered": o.answered,
                "call_errors": o.call_errors, "refused_rule": o.refused_rule, "refused_limit": o.refused_limit,
                "failed_plugin": o.failed_plugin, "failed_node": o.failed_node, "failed_internal": o.failed_internal,
            })
        };
        let named = |rows: &[(String, UsageCounts)], key: &str| -> Vec<Value> {
            rows.iter()
                .map(|(name, c)| {
                    let mut v = counts(c);
                    v[key] = name.clone().into();
                    v
                })
                .collect()
        };
        let usage = self.usage.as_ref().map(|u| {
            json!({
                "last_24h": counts(&u.totals()),
                "bindings": named(&u.bindings, "binding_id"),
                "methods": named(&u.methods, "method"),
                "per_minute": u.per_minute.iter().enumerate()
                    .map(|(i, c)| json!([(u.minute_from + i as i64) * 60, c.calls])).collect::<Vec<_>>(),
            })
        });
        let node = match &self.node {
            NodeStatus::Head { block, syncing } => {
                json!({"state": if syncing.is_some() { "syncing" } else { "in_sync" }, "head_block": block})
            }
            NodeStatus::TimedOut { .. } => json!({"state": "no_answer"}),
            NodeStatus::Unreachable => json!({"state": "unreachable"}),
            NodeStatus::NotServed => json!({"state": "not_served"}),
        };
        json!({
            "instance": self.instance_id,
            "plan": self.plan,
            "state": self.state,
            "chain": self.chain.iter().map(|(name, fail_open)| json!({"name": name, "fail_open": fail_open})).collect::<Vec<_>>(),
            "traffic": traffic.iter().map(|(t, calls, errors)| json!([t, calls, errors])).collect::<Vec<_>>(),
            "usage": usage,
            "latency": self.latency.map(|l| json!({"p50_ms": l.p50 * 1000.0, "p99_ms": l.p99 * 1000.0, "calls": l.calls})),
            "cache": self.cache.map(|(hits, misses)| json!({"hits": hits, "misses": misses})),
            "node": node,
            "validator": self.validator.as_ref().map(|v| json!({
                "fee_recipient": v.fee_recipient,
                "keys": v.keys.iter().map(|k| json!({
                    "pubkey": k.pubkey, "index": k.index, "status": k.status, "balance_gwei": k.balance_gwei,
                    "fee_recipient": k.fee_recipient, "attestation_slot": k.attestation_slot,
                    "live_previous_epoch": k.live_previous_epoch,
                })).collect::<Vec<_>>(),
            })),
        })
    }
}

fn outcomes_section(totals: &UsageCounts) -> String {
    let o = Outcomes::of(totals);
    let row = |id: &str, label: &str, n: u64, class: &str| {
        format!(r#"<tr class="{class}"><th>{}</th><td id="{id}">{}</td></tr>"#, escape(label), grouped(n))
    };
    let mut out = String::from(r#"<section class="wide"><h2>Outcomes, last 24 hours</h2><div class="split">"#);
    let _ = write!(
        out,
        r#"<div><h3>Answered</h3><table class="outcomes">{}{}</table></div>"#,
        row("answered", "with a result", o.answered, "answered"),
        row("call-errors", "with the call's own error (a revert, an unknown method)", o.call_errors, "call-errors"),
    );
    let _ = write!(
        out,
        r#"<div><h3>Refused by rules and limits <span class="muted">(not failures)</span></h3><table class="outcomes">{}{}</table></div>"#,
        row("refused-rule", "by a rule: rate limit, allowlist, method filter", o.refused_rule, "refused"),
        row("refused-limit", "by a plan limit: quota, size, connections", o.refused_limit, "refused"),
    );
    let _ = write!(
        out,
        r#"<div><h3>Failed</h3><table class="outcomes">{}{}{}</table></div>"#,
        row("failed-plugin", "in a plugin", o.failed_plugin, "failed"),
        row("failed-node", "at the node", o.failed_node, "failed"),
        row("failed-internal", "in ovsb", o.failed_internal, "failed"),
    );
    out.push_str("</div></section>");
    out
}

fn validator_section(v: &ValidatorView) -> String {
    let mut out = String::from(r#"<section class="wide validator"><h2>Validator keys</h2>"#);
    match &v.beacon {
        BeaconStatus::Head { slot, epoch, syncing } => {
            let _ = write!(
                out,
                r#"<p>Beacon node: head slot <b id="beacon-slot">{}</b>, epoch {}{}.</p>"#,
                grouped(*slot),
                grouped(*epoch),
                if *syncing { ", syncing" } else { ", in sync" }
            );
        }
        BeaconStatus::TimedOut { ms } => {
            let _ =
                write!(out, r#"<p class="warn" id="beacon-down">The beacon node did not answer within {ms} ms.</p>"#);
        }
        BeaconStatus::Unreachable => {
            out.push_str(r#"<p class="warn" id="beacon-down">The beacon node could not be reached.</p>"#)
        }
        BeaconStatus::NotRunning => {
            out.push_str(r#"<p class="warn" id="beacon-down">The validator client is not running right now.</p>"#)
        }
    }
    if let Some(fee) = &v.fee_recipient {
        let _ = write!(out, r#"<p>Fee recipient: <code class="id" id="fee-recipient">{}</code></p>"#, escape(fee));
    }
    if v.keys.is_empty() {
        out.push_str(r#"<p class="muted">No keys.</p></section>"#);
        return out;
    }
    out.push_str(
        r#"<div class="scroll"><table class="keys"><thead><tr><th>Key</th><th>Index</th><th>Status</th><th>Balance</th><th>Fee recipient</th><th>Duty</th></tr></thead><tbody>"#,
    );
    for key in &v.keys {
        let index = key.index.map_or("–".to_string(), |i| i.to_string());
        let status = key.status.as_deref().unwrap_or(match v.beacon {
            BeaconStatus::Head { .. } => "not on chain yet",
            _ => "unknown",
        });
        let balance = key.balance_gwei.map_or("–".to_string(), ether);
        let fee = key.fee_recipient.as_deref().or(v.fee_recipient.as_deref()).unwrap_or("–");
        let mut duty = match key.attestation_slot {
            Some(slot) => format!("attests at slot {}", grouped(slot)),
            None => "–".to_string(),
        };
        match key.live_previous_epoch {
            Some(true) => duty.push_str("; attested last epoch"),
            Some(false) => duty.push_str("; missed last epoch"),
            None => {}
        }
        let _ = write!(
            out,
            r#"<tr><td class="id"><code>{}</code></td><td>{}</td><td class="status">{}</td><td>{}</td><td class="id"><code>{}</code></td><td>{}</td></tr>"#,
            escape(&key.pubkey),
            index,
            escape(status),
            balance,
            escape(fee),
            escape(&duty)
        );
    }
    out.push_str("</tbody></table></div>");
    if v.more_keys > 0 {
        let _ = write!(out, r#"<p class="muted">and {} more keys.</p>"#, grouped(v.more_keys as u64));
    }
    out.push_str("</section>");
    out
}

const STYLE: &str = r#"
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 16px;display:flex;flex-wrap:wrap;gap:4px 16px;align-items:center}
.brand{display:flex;align-items:center;gap:10px;font-weight:600}
.logo{height:28px;max-width:140px;object-fit:contain}
header h1{margin:0;font-size:16px;font-weight:500;color:#c9d1e0;overflow-wrap:anywhere}
main{padding:16px;display:grid;gap:16px;max-width:1100px;margin:0 auto}
.cards{display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(min(100%,160px),1fr))}
.card,section{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px #0002;min-width:0}
.label,h2{font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:#667;margin:0 0 6px;font-weight:600}
h3{font-size:14px;margin:0 0 4px}
.value{font-size:20px;font-weight:600;overflow-wrap:anywhere}
.note,.muted{color:#667;font-size:13px}
.state.ready,.ok{color:#1a7f37}.state.failed,.bad{color:#c62828}.state.other,.warn{color:#9a6700}
.chart{width:100%;height:auto;display:block}
.chart text{font:11px system-ui,sans-serif;fill:#667}.chart .y{text-anchor:end}.chart .x{text-anchor:middle}
.chart .grid{stroke:#e3e6ec}.chart .axis,.chart .tick{stroke:#99a}
rect.answered,.swatch.answered{fill:#2563eb;background:#2563eb}
rect.call-errors,.swatch.call-errors{fill:#94a3b8;background:#94a3b8}
rect.refused,.swatch.refused{fill:#f59e0b;background:#f59e0b}
rect.failed,.swatch.failed{fill:#dc2626;background:#dc2626}
.legend{list-style:none;padding:0;margin:8px 0 0;display:flex;flex-wrap:wrap;gap:4px 16px;font-size:13px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.split{display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(min(100%,220px),1fr))}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:4px 8px 4px 0;border-bottom:1px solid #eef0f3;vertical-align:top}
td{font-variant-numeric:tabular-nums}
.outcomes th{font-weight:400}.outcomes td{text-align:right;font-weight:600}
.id,code{overflow-wrap:anywhere;word-break:break-all;font-family:ui-monospace,monospace;font-size:13px}
.empty{font-size:20px;font-weight:600;margin:4px 0}
ol{margin:0;padding-left:20px}li{margin:3px 0;font-family:ui-monospace,monospace}
.legend li{font-family:inherit}
.footer{text-align:center}
@media (max-width:480px){
main{padding:10px;gap:10px}.value{font-size:17px}th,td{padding-right:6px}
.chart text{font-size:21px}
table.usage thead{display:none}
table.usage tr{display:grid;grid-template-columns:repeat(5,1fr);gap:0 6px;padding:6px 0;border-bottom:1px solid #eef0f3}
table.usage td{border:0;padding:0}
table.usage td.id{grid-column:1/-1;font-weight:600;word-break:normal}
table.usage td:not(.id)::before{display:block;color:#667;font-size:11px}
table.usage td:nth-child(2)::before{content:"Calls"}
table.usage td:nth-child(3)::before{content:"Units"}
table.usage td:nth-child(4)::before{content:"Answered"}
table.usage td:nth-child(5)::before{content:"Refused"}
table.usage td:nth-child(6)::before{content:"Failed"}
}
"#;

const SCRIPT: &str = r#"
(function(){
  const every = {{REFRESH_MS}};
  async function refresh(){
    try {
      const r = await fetch(location.href, {cache: 'no-store'});
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
      const fresh = doc.querySelector('main');
      if (fresh) document.querySelector('main').replaceWith(document.adoptNode(fresh));
    } catch (e) { /* the next refresh tries again */ }
  }
  setInterval(refresh, every);
  document.body.dataset.live = 'true';
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(outcomes: [u64; 7], units: u64) -> UsageCounts {
        UsageCounts { calls: outcomes.iter().sum(), compute_units: units, bytes_out: 0, outcomes }
    }

    #[test]
    fn ticks_are_whole_distinct_and_reach_the_top_at_any_traffic() {
        assert_eq!(ticks(0), vec![0, 1]);
        assert_eq!(ticks(1), vec![0, 1]);
        assert_eq!(ticks(3), vec![0, 1, 2, 3]);
        assert_eq!(ticks(7), vec![0, 2, 4, 6, 8]);
        assert_eq!(ticks(100), vec![0, 20, 40, 60, 80, 100]);
        for max in (0..2000).chain([u64::from(u32::MAX), 987_654_321, u64::MAX]) {
            let t = ticks(max);
            assert!(t.windows(2).all(|w| w[0] < w[1]), "{max}: {t:?}");
            assert!(*t.last().unwrap() >= max.min(u64::MAX - u64::MAX % t[1]) && t.len() <= 7, "{max}: {t:?}");
            let labels: Vec<String> = t.iter().map(|n| compact(*n)).collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(unique, labels, "{max}: no label twice");
        }
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(compact(1500), "1.5k");
        assert_eq!(compact(20_000), "20k");
        assert_eq!(compact(3_200_000), "3.2M");
        assert_eq!(ether(32_000_000_000), "32 ETH");
        assert_eq!(ether(31_999_912_345), "31.9999 ETH");
        assert_eq!(duration(0.00123), "1.2 ms");
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(clock(61), "01:01");
    }

    #[test]
    fn everything_from_outside_is_escaped() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        let mut view = sample();
        view.instance_id = "<script>alert(1)</script>".into();
        view.provider_name = "Acme & \"Co\"".into();
        view.logo_url = Some("https://cdn.example/l.png?a=1&b=\"><script>".into());
        view.chain = vec![("<img src=x>".into(), true)];
        if let Some(usage) = view.usage.as_mut() {
            usage.methods.push(("<b>evil</b>".into(), counts([1, 0, 0, 0, 0, 0, 0], 1)));
        }
        let page = view.render();
        assert!(!page.contains("<script>alert") && !page.contains("<img src=x>") && !page.contains("<b>evil"));
        assert!(page.contains("Acme &amp; &quot;Co&quot;"));
        assert!(page.contains(r#"src="https://cdn.example/l.png?a=1&amp;b=&quot;&gt;&lt;script&gt;""#));
        assert_eq!(page.matches("<script>").count(), 1, "only the page's own script");
    }

    fn sample() -> View {
        let now_minute = 29_000_000;
        let (minute_from, hour_from, _) = windows(now_minute);
        let stored = StoredUsage {
            per_minute: vec![(now_minute - 1, counts([3, 0, 1, 0, 0, 1, 0], 50))],
            per_hour: vec![(hour_from + 23 * 60, counts([3, 0, 1, 0, 0, 1, 0], 50))],
            bindings: vec![("web".into(), counts([3, 0, 1, 0, 0, 1, 0], 50))],
            methods: vec![("eth_call".into(), counts([3, 0, 1, 0, 0, 1, 0], 50))],
        };
        let usage = UsageView::assemble(now_minute, stored, &[]);
        assert_eq!(usage.minute_from, minute_from);
        View {
            provider_name: "ovsb".into(),
            logo_url: None,
            instance_id: "i".into(),
            plan: "shared".into(),
            state: "ready".into(),
            chain: vec![],
            now_ms: now_minute * 60_000,
            usage: Some(usage),
            latency: None,
            cache: None,
            node: NodeStatus::Unreachable,
            validator: None,
        }
    }

    /// The store's rows and this replica's unflushed rows add up, each counted once, in the
    /// minute and hour they fall in; rows outside the windows are left out.
    #[test]
    fn stored_and_unflushed_usage_add_up_once_per_bucket() {
        let hour = 483_333 * 60;
        let now_minute = hour + 30; // half past an hour
        let (minute_from, hour_from, _) = windows(now_minute);
        assert_eq!(minute_from, now_minute - 59);
        assert_eq!(hour_from, hour - 23 * 60);
        let a = counts([2, 0, 0, 0, 0, 0, 0], 20);
        let b = counts([0, 0, 1, 0, 0, 0, 0], 0);
        let stored = StoredUsage {
            per_minute: vec![(now_minute - 2, a)],
            // The hour holds the same minute's row, and one of an earlier minute.
            per_hour: vec![(hour, counts([3, 0, 0, 0, 0, 0, 0], 30)), (hour_from - 60, a)],
            bindings: vec![("web".into(), counts([3, 0, 0, 0, 0, 0, 0], 30))],
            methods: vec![("eth_call".into(), counts([3, 0, 0, 0, 0, 0, 0], 30))],
        };
        let pending = vec![
            UsageRow {
                instance_id: "i".into(),
                binding_id: "bot".into(),
                minute: now_minute,
                method: "eth_call".into(),
                counts: b,
            },
            UsageRow {
                instance_id: "i".into(),
                binding_id: "bot".into(),
                minute: hour_from - 1,
                method: "x".into(),
                counts: b,
            },
        ];
        let view = UsageView::assemble(now_minute, stored, &pending);
        assert_eq!(view.per_minute.len(), MINUTES);
        assert_eq!(view.per_minute[MINUTES - 3].calls, 2);
        assert_eq!(view.per_minute[MINUTES - 1].calls, 1);
        assert_eq!(view.per_hour.len(), HOURS);
        assert_eq!(view.per_hour[HOURS - 1].calls, 4, "3 stored (once) + 1 unflushed");
        assert_eq!(view.totals().calls, 4);
        assert_eq!(view.totals().outcomes[2], 1);
        let bindings: Vec<(&str, u64)> = view.bindings.iter().map(|(n, c)| (n.as_str(), c.calls)).collect();
        assert_eq!(bindings, vec![("web", 3), ("bot", 1)]);
        let methods: Vec<(&str, u64)> = view.methods.iter().map(|(n, c)| (n.as_str(), c.calls)).collect();
        assert_eq!(methods, vec![("eth_call", 4)]);
    }

    #[test]
    fn refusals_are_shown_apart_from_failures_and_the_chart_has_axes_and_a_legend() {
        let page = sample().render();
        assert!(page.contains(r#"<td id="refused-rule">1</td>"#), "{page}");
        assert!(page.contains(r#"<td id="failed-node">1</td>"#), "{page}");
        assert!(page.contains(r#"<td id="answered">3</td>"#), "{page}");
        assert!(page.contains(r#"<text class="y" x="42" y="190.0">0</text>"#), "{page}");
        assert!(page.contains(r#"class="x""#) && page.contains(r#"class="legend""#));
        assert!(page.contains("Refused by rules and limits"));
        let mut empty = sample();
        empty.usage = Some(UsageView::assemble(
            29_000_000,
            StoredUsage { per_minute: vec![], per_hour: vec![], bindings: vec![], methods: vec![] },
            &[],
        ));
        assert!(empty.render().contains("No calls yet"));
    }

    #[test]
    fn a_validator_s_keys_show_status_balance_and_duty_and_degrade_without_a_beacon_node() {
        let key = "0x".to_string() + &"ab".repeat(48);
        let mut view = sample();
        view.validator = Some(ValidatorView {
            fee_recipient: Some("0x00000000000000000000000000000000000000bb".into()),
            beacon: BeaconStatus::Head { slot: 70, epoch: 8, syncing: false },
            keys: vec![KeyView {
                pubkey: key.clone(),
                index: Some(3),
                status: Some("active_ongoing".into()),
                balance_gwei: Some(32_000_000_000),
                fee_recipient: None,
                attestation_slot: Some(69),
                live_previous_epoch: Some(true),
            }],
            more_keys: 0,
        });
        let page = view.render();
        assert!(page.contains(&key) && page.contains("active_ongoing") && page.contains("32 ETH"), "{page}");
        assert!(page.contains("attests at slot 69; attested last epoch"), "{page}");
        assert!(page.contains("0x00000000000000000000000000000000000000bb"));
        if let Some(v) = view.validator.as_mut() {
            v.beacon = BeaconStatus::TimedOut { ms: 1500 };
            v.keys[0] = KeyView { pubkey: key.clone(), ..Default::default() };
        }
        let page = view.render();
        assert!(page.contains("did not answer within 1500 ms") && page.contains(&key), "{page}");
    }
}
