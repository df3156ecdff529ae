//! The report's chart: p95 latency, goodput and database connections against the step,
//! one line per run, as a standalone SVG.
//!
//! Written by hand rather than with plotters: plotters needs a font backend (font-kit and
//! the system's fontconfig) to place text, and three line panels with axes are a few dozen
//! lines of SVG that any browser renders with its own fonts.

use std::fmt::Write as _;

use crate::report::{Report, StepResult};

const PANEL_WIDTH: f64 = 320.0;
const PANEL_HEIGHT: f64 = 220.0;
const MARGIN_LEFT: f64 = 56.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 44.0;
const GAP: f64 = 64.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

struct Panel {
    title: &'static str,
    unit: &'static str,
    value: fn(&StepResult) -> f64,
}

const PANELS: [Panel; 3] = [
    Panel {
        title: "p95 latency of successes",
        unit: "ms",
        value: |s| s.success.p95_ms,
    },
    Panel {
        title: "goodput",
        unit: "req/s",
        value: |s| s.goodput_rps,
    },
    Panel {
        title: "busy primary connections, max",
        unit: "count",
        value: |s| s.db.primary_busy_max as f64,
    },
];

pub fn svg(report: &Report) -> String {
    let width = MARGIN_LEFT + 3.0 * (PANEL_WIDTH + GAP);
    let height = MARGIN_TOP + PANEL_HEIGHT + MARGIN_BOTTOM + 24.0 * report.runs.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);

    let steps: Vec<usize> = report
        .runs
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| s.concurrency))
        .collect();
    let x_max = steps.iter().copied().max().unwrap_or(1).max(1) as f64;
    let x_label = match report.model.as_str() {
        "open" => "offered req/s",
        "users" => "users",
        _ => "concurrent requests",
    };

    for (index, panel) in PANELS.iter().enumerate() {
        let left = MARGIN_LEFT + index as f64 * (PANEL_WIDTH + GAP);
        let top = MARGIN_TOP;
        let y_max = nice_ceiling(
            report
                .runs
                .iter()
                .flat_map(|r| r.steps.iter().map(panel.value))
                .fold(0.0, f64::max),
        );
        let x = |v: f64| left + v / x_max * PANEL_WIDTH;
        let y = |v: f64| top + PANEL_HEIGHT - v / y_max * PANEL_HEIGHT;

        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-weight="bold">{} ({})</text>"#,
            left,
            top - 14.0,
            panel.title,
            panel.unit
        );
        let _ = writeln!(
            out,
            r##"<rect x="{left:.1}" y="{top:.1}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="none" stroke="#888"/>"##
        );
        for tick in 0..=4 {
            let value = y_max * f64::from(tick) / 4.0;
            let _ = writeln!(
                out,
                r##"<line x1="{left:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + PANEL_WIDTH,
                left - 6.0,
                y(value) + 4.0,
                short(value),
                y = y(value),
            );
        }
        let mut seen_steps = steps.clone();
        seen_steps.sort_unstable();
        seen_steps.dedup();
        for step in &seen_steps {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{step}</text>"#,
                x(*step as f64),
                top + PANEL_HEIGHT + 16.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x_label}</text>"#,
            left + PANEL_WIDTH / 2.0,
            top + PANEL_HEIGHT + 34.0
        );

        for (run_index, run) in report.runs.iter().enumerate() {
            let colour = COLOURS[run_index % COLOURS.len()];
            let points: Vec<String> = run
                .steps
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.concurrency as f64), y((panel.value)(s))))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                points.join(" ")
            );
            for point in &points {
                let (px, py) = point.split_once(',').expect("formatted above");
                let _ = writeln!(
                    out,
                    r#"<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>"#
                );
            }
        }
    }

    for (run_index, run) in report.runs.iter().enumerate() {
        let colour = COLOURS[run_index % COLOURS.len()];
        let legend_y = MARGIN_TOP + PANEL_HEIGHT + MARGIN_BOTTOM + 24.0 * run_index as f64 + 8.0;
        let verdict = match &run.verdict {
            Some(v) if v.passed => " (verdict: pass)",
            Some(_) => " (verdict: FAIL)",
            None => "",
        };
        let _ = writeln!(
            out,
            r#"<rect x="{MARGIN_LEFT}" y="{:.1}" width="14" height="4" fill="{colour}"/><text x="{:.1}" y="{:.1}">{}{}</text>"#,
            legend_y - 4.0,
            MARGIN_LEFT + 20.0,
            legend_y + 2.0,
            escape(&run.label),
            verdict
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `value`.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

fn short(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_ceilings_are_round_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(450.0), 500.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
    }

    #[test]
    fn tick_labels_show_decimals_only_when_they_have_some() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(5.0), "5");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(15.0), "15");
        assert_eq!(short(20_000.0), "20k");
    }
}
