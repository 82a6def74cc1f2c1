//! `hedge-bench report`: every scenario in one command, written as one JSON file, a markdown
//! table and an SVG of the failover-time distributions.
//!
//! Each scenario runs as a child process of this binary (`hedge-bench <scenario> --json`), so
//! they run one after the other with nothing shared, exactly as when run by hand, and a
//! scenario that fails leaves its error in the report instead of stopping the others. The chaos
//! scenario runs its short profile and keeps every run's report (`chaos-runs.json`), whose
//! failover samples the SVG draws; `--chaos-report` draws an earlier chaos run's file instead
//! of running the profile (for the long profile, which takes half an hour).
//!
//! Written to `--out` (default `target/bench-report/`): `report.json`, `report.md`,
//! `failover.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use tokio::time::timeout;

/// The scenarios, in the order they run.
pub const SCENARIOS: &[&str] = &["election", "messaging", "storage", "chaos"];

/// How long one scenario may take.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60 * 60);

/// Options of the report.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write `report.json`, `report.md` and `failover.svg`.
    #[arg(long, default_value = "target/bench-report")]
    out: PathBuf,
    /// The scenarios to run (default: all).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    scenarios: Vec<String>,
    /// Draw this chaos report (`hedge-bench chaos --report FILE`) instead of running the
    /// chaos profile.
    #[arg(long)]
    chaos_report: Option<PathBuf>,
}

/// The report's errors.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// This program's path is unknown.
    #[error("cannot tell where hedge-bench is: {0}")]
    CurrentExe(std::io::Error),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::File {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Runs the report.
pub async fn run(args: Args) -> Result<(), ReportError> {
    std::fs::create_dir_all(&args.out).map_err(|e| file_error(&args.out, e))?;
    let exe = std::env::current_exe().map_err(ReportError::CurrentExe)?;
    let chosen: Vec<&str> = if args.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        SCENARIOS
            .iter()
            .copied()
            .filter(|s| args.scenarios.iter().any(|c| c == s))
            .collect()
    };
    let chaos_runs = args.out.join("chaos-runs.json");
    let mut results = BTreeMap::new();
    for scenario in chosen {
        let result = if let (true, Some(path)) = (scenario == "chaos", &args.chaos_report) {
            saved_summary(path)
        } else {
            let mut extra: Vec<String> = Vec::new();
            if scenario == "chaos" {
                extra.extend(["--short".into(), "--report".into()]);
                extra.push(chaos_runs.display().to_string());
            }
            eprintln!("report: running {scenario}");
            run_scenario(&exe, scenario, &extra).await
        };
        results.insert(
            scenario.to_owned(),
            result.unwrap_or_else(|e| json!({ "error": e })),
        );
    }
    let samples = match (&args.chaos_report, results.contains_key("chaos")) {
        (Some(path), _) => failover_samples(path)?,
        (None, true) => failover_samples(&chaos_runs).unwrap_or_default(),
        (None, false) => BTreeMap::new(),
    };
    let lease_ms = results
        .get("chaos")
        .and_then(|c| c.get("lease_ms"))
        .and_then(Value::as_f64)
        .or_else(|| lease_of(args.chaos_report.as_deref()))
        .unwrap_or(2000.0);
    let report = json!({
        "machine": machine(),
        "scenarios": results,
    });
    let write = |name: &str, text: String| {
        let path = args.out.join(name);
        std::fs::write(&path, text).map_err(|e| file_error(&path, e))
    };
    write(
        "report.json",
        serde_json::to_string_pretty(&report).map_err(|e| file_error(&args.out, e))?,
    )?;
    write("report.md", markdown(&report))?;
    write("failover.svg", svg(&samples, lease_ms))?;
    println!(
        "report: wrote {0}/report.json, {0}/report.md, {0}/failover.svg",
        args.out.display()
    );
    Ok(())
}

async fn run_scenario(exe: &Path, scenario: &str, extra: &[String]) -> Result<Value, String> {
    let mut command = Command::new(exe);
    command
        .arg(scenario)
        .arg("--json")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let output = match timeout(SCENARIO_LIMIT, command.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(format!("cannot run {scenario}: {e}")),
        Err(_) => return Err(format!("{scenario} took longer than {SCENARIO_LIMIT:?}")),
    };
    if !output.status.success() {
        return Err(format!("{scenario} failed ({})", output.status));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("{scenario} printed no JSON: {e}"))
}

/// The summary saved in a chaos report file, with the file's name.
fn saved_summary(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let report: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut summary = report
        .get("summary")
        .cloned()
        .ok_or_else(|| format!("{} has no summary", path.display()))?;
    if let Some(map) = summary.as_object_mut() {
        map.insert("from".into(), json!(path.display().to_string()));
    }
    Ok(summary)
}

/// Failover samples (ms) by fault kind from a chaos report file.
fn failover_samples(path: &Path) -> Result<BTreeMap<String, Vec<f64>>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    let report: Value = serde_json::from_str(&text).map_err(|e| file_error(path, e))?;
    let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in report
        .get("runs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for (kind, values) in run
            .get("failover_ms")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            samples.entry(kind.clone()).or_default().extend(
                values
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64),
            );
        }
    }
    Ok(samples)
}

/// The lease of a chaos report file's profile, in milliseconds.
fn lease_of(path: Option<&Path>) -> Option<f64> {
    let text = std::fs::read_to_string(path?).ok()?;
    let report: Value = serde_json::from_str(&text).ok()?;
    let lease = report.get("profile")?.get("lease")?;
    let secs = lease.get("secs")?.as_f64()?;
    let nanos = lease.get("nanos")?.as_f64()?;
    Some(secs * 1000.0 + nanos / 1e6)
}

fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    json!({ "cores": cores, "cpu": cpu, "os": std::env::consts::OS })
}

/// One table row per figure: top-level numbers, and every `p50`/`p99` with its path.
fn markdown(report: &Value) -> String {
    let mut out = String::from("# hedge benchmark report\n\n");
    if let Some(m) = report.get("machine") {
        let _ = writeln!(out, "Machine: {m}\n");
    }
    out.push_str("| scenario | figure | value |\n|---|---|---|\n");
    if let Some(scenarios) = report.get("scenarios").and_then(Value::as_object) {
        for (name, value) in scenarios {
            let mut rows = Vec::new();
            figures(value, String::new(), 0, &mut rows);
            for (path, v) in rows {
                let _ = writeln!(out, "| {name} | {path} | {v} |");
            }
        }
    }
    out.push_str("\nFailover times by fault kind: failover.svg\n");
    out
}

fn figures(value: &Value, path: String, depth: usize, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                figures(v, p, depth + 1, rows);
            }
        }
        Value::Number(n) => {
            let leaf = path.rsplit('.').next().unwrap_or("");
            if depth <= 1 || leaf == "p50" || leaf == "p99" {
                // Integers as they are (a seed must stay exact), others to two decimals.
                let shown = match (n.as_u64(), n.as_f64()) {
                    (Some(i), _) => i.to_string(),
                    (None, Some(f)) => format!("{}", (f * 100.0).round() / 100.0),
                    _ => n.to_string(),
                };
                rows.push((path, shown));
            }
        }
        Value::String(s) if path == "error" || path.ends_with(".error") => {
            rows.push((path, s.clone()));
        }
        _ => {}
    }
}

/// A strip plot: one row per fault kind, a dot per sample, ticks at p50 and p99, and lines at
/// the lease and at the target (lease + 1 s).
pub fn svg(samples: &BTreeMap<String, Vec<f64>>, lease_ms: f64) -> String {
    const LEFT: f64 = 170.0;
    const WIDTH: f64 = 560.0;
    const ROW: f64 = 28.0;
    const TOP: f64 = 40.0;
    let rows: Vec<(&String, Vec<f64>)> = samples
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let mut v = v.clone();
            v.sort_by(f64::total_cmp);
            (k, v)
        })
        .collect();
    let target = lease_ms + 1000.0;
    let max = rows
        .iter()
        .filter_map(|(_, v)| v.last().copied())
        .fold(target, f64::max);
    // Room to the right of the largest sample and of the target line.
    let scale = (max * 1.1 / 1000.0).ceil() * 1000.0;
    let x = |ms: f64| LEFT + ms / scale * WIDTH;
    let height = TOP + ROW * rows.len().max(1) as f64 + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = LEFT + WIDTH + 30.0
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14">Failover after a fault that ended the leader's term (ms): dots are samples, | p50, ‖ p99</text>"#
    );
    let bottom = TOP + ROW * rows.len().max(1) as f64;
    for (ms, label, colour) in [(lease_ms, "lease", "#888"), (target, "lease + 1 s", "#c33")] {
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{bottom}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{x}" y="{y}" fill="{colour}" text-anchor="middle">{label}</text>"#,
            x = x(ms),
            y = TOP - 6.0
        );
    }
    for (i, (kind, values)) in rows.iter().enumerate() {
        let y = TOP + ROW * (i as f64 + 0.5);
        let _ = writeln!(
            s,
            r##"<text x="{tx}" y="{ty}" text-anchor="end">{kind} (n={n})</text><line x1="{LEFT}" y1="{y}" x2="{x2}" y2="{y}" stroke="#eee"/>"##,
            tx = LEFT - 8.0,
            ty = y + 4.0,
            n = values.len(),
            x2 = LEFT + WIDTH
        );
        for v in values {
            let _ = writeln!(
                s,
                r##"<circle cx="{cx:.1}" cy="{y}" r="3" fill="#36c" fill-opacity="0.5"/>"##,
                cx = x(*v)
            );
        }
        let rank =
            |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        for (p, w) in [(0.5, 1.5), (0.99, 3.0)] {
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" y1="{a}" x2="{cx:.1}" y2="{b}" stroke="black" stroke-width="{w}"/>"#,
                cx = x(rank(p)),
                a = y - 9.0,
                b = y + 9.0
            );
        }
    }
    let mut tick = 0.0;
    while tick <= scale {
        let _ = writeln!(
            s,
            r#"<line x1="{cx}" y1="{bottom}" x2="{cx}" y2="{b2}" stroke="black"/><text x="{cx}" y="{ty}" text-anchor="middle">{tick}</text>"#,
            cx = x(tick),
            b2 = bottom + 5.0,
            ty = bottom + 18.0
        );
        tick += 1000.0;
    }
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{bottom}" x2="{x2}" y2="{bottom}" stroke="black"/></svg>"#,
        x2 = LEFT + WIDTH
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_svg_has_a_row_per_kind_and_a_dot_per_sample() {
        let samples = BTreeMap::from([
            ("crash".to_owned(), vec![1500.0, 1700.0, 2100.0]),
            ("pause".to_owned(), vec![1800.0]),
            ("none".to_owned(), vec![]),
        ]);
        let svg = svg(&samples, 2000.0);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("crash (n=3)") && svg.contains("pause (n=1)"));
        assert!(!svg.contains("none (n="));
    }

    #[test]
    fn the_table_keeps_top_level_numbers_and_percentiles() {
        let report = json!({
            "scenarios": {
                "chaos": { "runs": 2, "seed": 14103403199561910129u64, "failover_ms": { "p50": 1.234, "p99": 2.0, "max": 3.0 } },
                "storage": { "error": "it failed" }
            }
        });
        let md = markdown(&report);
        assert!(md.contains("| chaos | runs | 2 |"));
        assert!(md.contains("| chaos | seed | 14103403199561910129 |"));
        assert!(md.contains("| chaos | failover_ms.p50 | 1.23 |"));
        assert!(!md.contains("failover_ms.max"));
        assert!(md.contains("| storage | error | it failed |"));
    }
}
