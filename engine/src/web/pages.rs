//! The status pages, rendered on the server as HTML (maud escapes every
//! value): the jobs and workers, and a job's page with its progress,
//! counters, a timeline of its attempts per worker (the picture the
//! MapReduce paper draws of a run), and every task's attempts. Pages of
//! running jobs reload themselves every two seconds; no script runs.

use std::collections::BTreeMap;
use std::time::Duration;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::coordinator::service::WorkerView;
use crate::identity::Identity;
use crate::protocol::status::{AttemptStatus, JobStatusDoc, Progress, TaskStatus};

const CSS: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse}td,th{padding:.2em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.state{font-weight:600}.succeeded{color:#1a7f37}.failed{color:#c62828}.running{color:#1565c0}
.cancelled,.lost,.superseded,.stopped{color:#777}.queued,.pending{color:#8a6d00}
.error{color:#c62828;white-space:pre-wrap;font-family:monospace;font-size:12px}
.bar{display:inline-block;width:120px;height:10px;background:#eee;vertical-align:middle}
.bar span{display:block;height:100%;background:#1a7f37}
nav{margin-bottom:1em}code{font-size:12px}
svg text{font:11px system-ui,sans-serif}
.t-map{fill:#64b5f6}.t-reduce{fill:#81c784}.t-failed{fill:#e57373}.t-lost{fill:#bdbdbd}
.t-superseded{fill:#ffe082}.t-running{fill-opacity:.55}.t-backup{stroke:#333;stroke-dasharray:3 2}
.legend span{display:inline-block;width:12px;height:10px;margin:0 4px 0 12px}
.legend .t-map{background:#64b5f6}.legend .t-reduce{background:#81c784}.legend .t-failed{background:#e57373}
.legend .t-lost{background:#bdbdbd}.legend .t-superseded{background:#ffe082}.legend .t-backup{border:1px dashed #333}
";

fn page(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if refresh { meta http-equiv="refresh" content="2"; }
                title { (title) " · wmr" }
                style { (PreEscaped(CSS)) }
            }
            body {
                nav { a href="/" { "wmr" } " · " a href="/metrics" { "metrics" } }
                (body)
            }
        }
    }
}

/// A page with one sentence.
pub fn message(text: &str) -> Markup {
    page("wmr", false, html! { p { (text) } })
}

/// The login form; `failed` says a token given was wrong.
pub fn login(failed: bool) -> Markup {
    page(
        "log in",
        false,
        html! {
            h1 { "Log in" }
            @if failed { p.failed { "That token is not valid here." } }
            p { "This coordinator requires a token from its tokens file (the same one "
                code { "wmr submit" } " uses)." }
            form method="post" action="/login" {
                input type="password" name="token" id="token" size="40" autocomplete="off" autofocus;
                " "
                button type="submit" id="login" { "Log in" }
            }
        },
    )
}

fn progress(p: Progress) -> Markup {
    let pct = (p.done * 100).checked_div(p.total).unwrap_or(100);
    html! {
        span.bar title={(pct) "%"} { span style={"width:" (pct) "%"} {} }
        " " span.num { (p.done) "/" (p.total) }
    }
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn seconds(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

/// A time axis label: milliseconds for runs under ten seconds.
fn tick(ms: u64, span_ms: u64) -> String {
    if span_ms < 10_000 {
        format!("{ms} ms")
    } else {
        format!("{:.0} s", ms as f64 / 1000.0)
    }
}

/// The front page: jobs (newest first) and workers.
pub fn index(jobs: &[JobStatusDoc], workers: &[WorkerView], who: &Identity, tokens: bool) -> Markup {
    let refresh = jobs.iter().any(|j| !j.state.is_final());
    page(
        "jobs",
        refresh,
        html! {
            h1 { "Jobs" }
            @if tokens { p { "Logged in as " b { (who.name) } ". " a href="/logout" { "Log out" } } }
            @if jobs.is_empty() {
                p { "No jobs yet. Submit one with " code { "wmr submit" } "." }
            } @else {
                table id="jobs" {
                    tr { th { "job" } th { "name" } th { "state" } th { "maps" } th { "reduces" }
                         th { "submitted" } th { "took" } }
                    @for j in jobs.iter().rev() {
                        tr {
                            td { a href={"/jobs/" (j.job)} { (j.job) } }
                            td { (j.name) }
                            td { span class={"state " (j.state.as_str())} { (j.state.as_str()) } }
                            td { (progress(j.maps)) }
                            td { (progress(j.reduces)) }
                            td { (when(j.submitted_ms)) }
                            td.num { @if let Some(end) = j.ended_ms { (seconds(end.saturating_sub(j.submitted_ms))) } }
                        }
                    }
                }
            }
            h2 { "Workers" }
            @if workers.is_empty() {
                p { "No worker is registered." }
            } @else {
                table id="workers" {
                    tr { th { "worker" } th { "name" } th.num { "slots" } th.num { "running" } th { "last heard from" } }
                    @for w in workers {
                        tr {
                            td { (w.label) @if w.draining { " " span.pending { "draining" } } }
                            td { (w.name) } td.num { (w.slots) } td.num { (w.running) }
                            td { (format!("{:.1} s ago", w.silent_for.as_secs_f64())) }
                        }
                    }
                }
            }
        },
    )
}

/// An attempt's place in the timeline: its task and whether it is a
/// backup (started while an earlier attempt of its task still ran).
struct Bar<'a> {
    task: &'a TaskStatus,
    attempt: &'a AttemptStatus,
    backup: bool,
}

fn bars(tasks: &[TaskStatus]) -> Vec<Bar<'_>> {
    let mut bars = Vec::new();
    for task in tasks {
        for (i, attempt) in task.attempts.iter().enumerate() {
            let backup = task.attempts[..i]
                .iter()
                .any(|earlier| earlier.ended_ms.is_none_or(|end| end > attempt.started_ms));
            bars.push(Bar { task, attempt, backup });
        }
    }
    bars
}

const TIMELINE_WIDTH: f64 = 900.0;
const LANE: u32 = 18;
const LABEL: f64 = 170.0;

/// The timeline: one lane per worker, one bar per attempt, coloured by
/// phase and outcome, from the job's submission to its end (or now).
fn timeline(doc: &JobStatusDoc, now_ms: u64) -> Markup {
    let bars = bars(&doc.tasks);
    let mut lanes: BTreeMap<&str, u32> = BTreeMap::new();
    for b in &bars {
        let n = lanes.len() as u32;
        lanes.entry(b.attempt.worker.as_str()).or_insert(n);
    }
    // Lanes in order of first use, renumbered by name for a stable picture.
    for (i, lane) in lanes.values_mut().enumerate() {
        *lane = i as u32;
    }
    let start = doc.submitted_ms;
    let end = doc
        .ended_ms
        .unwrap_or(now_ms)
        .max(bars.iter().filter_map(|b| b.attempt.ended_ms).max().unwrap_or(0))
        .max(start + 1);
    let scale = TIMELINE_WIDTH / (end - start) as f64;
    let x = |ms: u64| LABEL + ms.saturating_sub(start) as f64 * scale;
    let height = lanes.len() as u32 * LANE + 24;
    let maps_done = doc
        .tasks
        .iter()
        .filter(|t| t.phase == "map")
        .map(|t| {
            t.attempts
                .iter()
                .filter(|a| a.state == "succeeded")
                .filter_map(|a| a.ended_ms)
                .max()
        })
        .collect::<Option<Vec<_>>>()
        .and_then(|ends| ends.into_iter().max());
    let ticks = 6u64;
    html! {
        p.legend {
            span.t-map {} "map" span.t-reduce {} "reduce" span.t-failed {} "failed"
            span.t-lost {} "lost or stopped" span.t-superseded {} "superseded"
            span.t-backup {} "backup"
        }
        svg id="timeline" width=(LABEL + TIMELINE_WIDTH + 40.0) height=(height) xmlns="http://www.w3.org/2000/svg" {
            @for (worker, lane) in &lanes {
                text x="0" y=(lane * LANE + 13) { (worker) }
                line x1=(LABEL) x2=(LABEL + TIMELINE_WIDTH) y1=(lane * LANE + LANE) y2=(lane * LANE + LANE) stroke="#eee" {}
            }
            @for b in &bars {
                @let a = b.attempt;
                @let x0 = x(a.started_ms);
                @let w = (x(a.ended_ms.unwrap_or(end)) - x0).max(2.0);
                @let outcome = match a.state.as_str() {
                    "succeeded" | "running" => if b.task.phase == "map" { "t-map" } else { "t-reduce" },
                    "failed" => "t-failed",
                    "lost" | "stopped" => "t-lost",
                    _ => "t-superseded",
                };
                rect class={(outcome) @if a.state == "running" { " t-running" } @if b.backup { " t-backup" }}
                    x=(format!("{x0:.1}")) y=(lanes[a.worker.as_str()] * LANE + 2) width=(format!("{w:.1}")) height=(LANE - 4) {
                    title {
                        (b.task.phase) " " (b.task.index) ", attempt " (a.attempt) ": " (a.state)
                        @if b.backup { " (backup)" }
                        @if let Some(e) = &a.error { "\n" (e) }
                    }
                }
            }
            @if let Some(done) = maps_done {
                line x1=(x(done)) x2=(x(done)) y1="0" y2=(height - 20) stroke="#555" stroke-dasharray="4 3" {
                    title { "every map committed: the reduces' shuffle completes" }
                }
            }
            @for i in 0..=ticks {
                @let ms = start + (end - start) * i / ticks;
                text x=(format!("{:.1}", x(ms))) y=(height - 4) text-anchor="middle" { (tick(ms - start, end - start)) }
            }
        }
    }
}

/// A job's page.
pub fn job(doc: &JobStatusDoc, now_ms: u64) -> Markup {
    let failed: Vec<(&TaskStatus, &AttemptStatus)> = doc
        .tasks
        .iter()
        .flat_map(|t| t.attempts.iter().map(move |a| (t, a)))
        .filter(|(_, a)| a.error.is_some())
        .collect();
    let skipped: Vec<&TaskStatus> = doc.tasks.iter().filter(|t| !t.skipped.is_empty()).collect();
    page(
        &doc.job,
        !doc.state.is_final(),
        html! {
            h1 { (doc.name) " " code { (doc.job) } }
            table id="summary" {
                tr { th { "state" } td { span class={"state " (doc.state.as_str())} id="state" { (doc.state.as_str()) } } }
                @if let Some(e) = &doc.error { tr { th { "error" } td.error { (e) } } }
                tr { th { "maps" } td { (progress(doc.maps)) } }
                tr { th { "reduces" } td { (progress(doc.reduces)) } }
                tr { th { "output" } td { code { (doc.output) } } }
                tr { th { "submitted" } td { (when(doc.submitted_ms)) } }
                @if let Some(end) = doc.ended_ms { tr { th { "took" } td { (seconds(end.saturating_sub(doc.submitted_ms))) } } }
            }
            h2 { "Timeline" }
            (timeline(doc, now_ms))
            @if !failed.is_empty() {
                h2 { "Failed attempts" }
                table id="failures" {
                    tr { th { "task" } th { "attempt" } th { "worker" } th { "kind" } th { "error" } }
                    @for (t, a) in &failed {
                        tr {
                            td { (t.phase) " " (t.index) } td.num { (a.attempt) } td { (a.worker) }
                            td { @if let Some(k) = a.kind { (k.as_str()) } }
                            td.error { (a.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            h2 { "Counters" }
            table id="counters" {
                @for (name, value) in &doc.counters { tr { td { code { (name) } } td.num { (value) } } }
            }
            @if !skipped.is_empty() {
                h2 { "Skipped records" }
                table id="skipped" {
                    tr { th { "task" } th { "records (byte offset, or row in the split)" } }
                    @for t in &skipped {
                        tr { td { (t.phase) " " (t.index) }
                             td { (t.skipped.iter().take(100).map(u64::to_string).collect::<Vec<_>>().join(", "))
                                  @if t.skipped.len() > 100 { " and " (t.skipped.len() - 100) " more" } } }
                    }
                }
            }
            h2 { "Tasks" }
            table id="tasks" {
                tr { th { "task" } th { "state" } th { "attempt" } th { "worker" } th { "start" } th { "end" } th { "outcome" } }
                @for t in &doc.tasks {
                    @for (i, a) in t.attempts.iter().enumerate() {
                        tr {
                            @if i == 0 {
                                td rowspan=(t.attempts.len()) { (t.phase) " " (t.index) }
                                td rowspan=(t.attempts.len()) { span class={"state " (t.state)} { (t.state) } }
                            }
                            td.num { (a.attempt) } td { (a.worker) }
                            td.num { "+" (seconds(a.started_ms.saturating_sub(doc.submitted_ms))) }
                            td.num { @if let Some(e) = a.ended_ms { "+" (seconds(e.saturating_sub(doc.submitted_ms))) } }
                            td { span class=(a.state) { (a.state) } }
                        }
                    }
                    @if t.attempts.is_empty() {
                        tr { td { (t.phase) " " (t.index) } td { span class={"state " (t.state)} { (t.state) } }
                             td {} td {} td {} td {} td {} }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::status::UserState;

    fn attempt(id: u64, worker: &str, span: (u64, Option<u64>), state: &str, error: Option<&str>) -> AttemptStatus {
        AttemptStatus {
            attempt: id,
            worker: worker.into(),
            started_ms: span.0,
            ended_ms: span.1,
            state: state.into(),
            error: error.map(String::from),
            kind: None,
        }
    }

    fn doc() -> JobStatusDoc {
        JobStatusDoc {
            job: "job-abc".into(),
            name: "<wordcount>".into(),
            state: UserState::Running,
            error: None,
            failure_kind: None,
            output: "/out".into(),
            submitted_ms: 1_000,
            ended_ms: None,
            maps: Progress { done: 1, total: 1 },
            reduces: Progress { done: 0, total: 1 },
            counters: [("wmr.map.input.records".to_string(), 7)].into_iter().collect(),
            tasks: vec![
                TaskStatus {
                    phase: "map".into(),
                    index: 0,
                    state: "committed".into(),
                    skipped: vec![42],
                    attempts: vec![
                        attempt(1, "w-1", (1_100, Some(1_500)), "failed", Some("boom <at> byte 42")),
                        attempt(2, "w-2", (1_200, Some(1_900)), "succeeded", None),
                    ],
                },
                TaskStatus {
                    phase: "reduce".into(),
                    index: 0,
                    state: "running".into(),
                    skipped: vec![],
                    attempts: vec![attempt(3, "w-1", (2_000, None), "running", None)],
                },
            ],
        }
    }

    #[test]
    fn a_job_page_escapes_and_shows_attempts_errors_and_a_timeline() {
        let html = job(&doc(), 3_000).into_string();
        // Values are escaped.
        assert!(html.contains("&lt;wordcount&gt;") && !html.contains("<wordcount>"));
        assert!(html.contains("boom &lt;at&gt; byte 42"));
        // A running job reloads itself.
        assert!(html.contains("http-equiv=\"refresh\""));
        // Two lanes, three bars; the second map attempt started while the
        // first ran, so it is a backup.
        assert_eq!(html.matches("<rect").count(), 3);
        assert!(html.contains("t-map t-backup"));
        assert!(html.contains("t-failed"));
        assert!(html.contains("t-reduce t-running"));
        assert!(html.contains(">w-1</text>") && html.contains(">w-2</text>"));
        assert!(html.contains("id=\"skipped\""));
    }

    #[test]
    fn a_finished_job_page_does_not_reload() {
        let mut d = doc();
        d.state = UserState::Succeeded;
        d.ended_ms = Some(2_500);
        assert!(!job(&d, 3_000).into_string().contains("refresh"));
    }
}
