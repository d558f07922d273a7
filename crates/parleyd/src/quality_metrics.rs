//! The call quality part of `/metrics` (issue 16): histograms of call setup time, round-trip
//! time and loss, and a counter of reports by path and relay protocol.
//!
//! The figures come from the call log at each scrape, so they survive restarts and need no
//! hook in the call driver: a setup time is final once a call is answered, and a party's
//! report once its call ended more than [`REPORT_SETTLED`] ago (the spec's window for the final
//! report), so every sample is counted once and the counts only grow, as Prometheus expects.
//! SQLite counts the samples at or under each bound (a scrape reads no rows: 100,000 calls
//! cost tens of milliseconds); the bounds, the units and the text are here, pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use parley_store::admin::{FigureCounts, QualityFigure};

use crate::state::AppState;

/// After this long past its end, a call's reports can no longer change (spec: "Call quality":
/// a final report within 60 s after the call ended).
pub const REPORT_SETTLED: Duration = Duration::from_secs(60);

/// Upper bounds of the buckets, in the metric's unit (seconds, or a ratio for loss).
pub const SETUP_SECONDS_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0];
pub const RTT_SECONDS_BUCKETS: &[f64] = &[0.025, 0.05, 0.1, 0.2, 0.3, 0.6, 1.0, 2.0];
/// 1% and 5% are the verdict's good and poor limits (`parley_store::quality`).
pub const LOSS_RATIO_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];

/// A Prometheus histogram: cumulative counts per upper bound, plus `+Inf`, sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds in the metric's unit.
    pub bounds: &'static [f64],
    /// `counts[i]`: samples `<= bounds[i]` (cumulative).
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// One histogram family: what it counts, its bounds in the metric's unit, and how many of the
/// stored unit make one of the metric's (ms per second, percent per ratio).
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub figure: QualityFigure,
    pub bounds: &'static [f64],
    pub stored_per_unit: f64,
}

pub const FAMILIES: [Family; 3] = [
    Family {
        name: "parley_call_setup_seconds",
        help: "Time from call:initiate to the call being answered, per answered call.",
        figure: QualityFigure::SetupMs,
        bounds: SETUP_SECONDS_BUCKETS,
        stored_per_unit: 1000.0,
    },
    Family {
        name: "parley_call_rtt_seconds",
        help: "Media round-trip time in each party's last call:stats report, once the call settled.",
        figure: QualityFigure::RttMs,
        bounds: RTT_SECONDS_BUCKETS,
        stored_per_unit: 1000.0,
    },
    Family {
        name: "parley_call_loss_ratio",
        help: "Packet loss (worse direction, 0-1) in each party's last call:stats report, once the call settled.",
        figure: QualityFigure::LossPct,
        bounds: LOSS_RATIO_BUCKETS,
        stored_per_unit: 100.0,
    },
];

impl Family {
    /// The bounds in the stored unit, for the query.
    pub fn stored_bounds(&self) -> Vec<f64> {
        self.bounds
            .iter()
            .map(|b| b * self.stored_per_unit)
            .collect()
    }

    /// The histogram of counts made over [`Family::stored_bounds`].
    pub fn histogram(&self, counts: FigureCounts) -> Histogram {
        Histogram {
            bounds: self.bounds,
            counts: counts.le,
            sum: counts.sum / self.stored_per_unit,
            count: counts.count,
        }
    }
}

/// The `parley_call_reports_total` lines from counts by (path, relay protocol).
pub fn render_paths(paths: &[(String, Option<String>, u64)], out: &mut String) {
    let mut by_path: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    // Every label pair appears, at 0 too, so that rate() works from the first report.
    for key in [
        ("direct", "none"),
        ("relay", "udp"),
        ("relay", "tcp"),
        ("relay", "tls"),
    ] {
        by_path.insert(key, 0);
    }
    for (path, protocol, count) in paths {
        let protocol = match path.as_str() {
            "relay" => protocol.as_deref().unwrap_or("unknown"),
            _ => "none",
        };
        *by_path.entry((path.as_str(), protocol)).or_default() += count;
    }
    let _ = writeln!(
        out,
        "# HELP parley_call_reports_total Call parties' last call:stats reports of settled calls, by media path and TURN transport.\n\
         # TYPE parley_call_reports_total counter"
    );
    for ((path, protocol), count) in by_path {
        let _ = writeln!(
            out,
            "parley_call_reports_total{{path=\"{path}\",relay_protocol=\"{protocol}\"}} {count}"
        );
    }
}

/// Reads the counts and appends their metrics; a database error leaves them out (and is
/// logged) rather than failing the whole scrape.
pub async fn render_metrics(state: &AppState, out: &mut String) {
    let settled = REPORT_SETTLED.as_millis() as i64;
    let now = parley_store::unix_millis_now();
    let mut text = String::new();
    for family in &FAMILIES {
        match state
            .store
            .quality_counts(family.figure, &family.stored_bounds(), now, settled)
            .await
        {
            Ok(counts) => family
                .histogram(counts)
                .render(family.name, family.help, &mut text),
            Err(error) => {
                log::warn!("metrics: cannot read the call quality figures: {error}");
                return;
            }
        }
    }
    match state.store.quality_paths(now, settled).await {
        Ok(paths) => render_paths(&paths, &mut text),
        Err(error) => {
            log::warn!("metrics: cannot read the call quality figures: {error}");
            return;
        }
    }
    out.push_str(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bounds_are_exact_in_the_stored_unit() {
        assert_eq!(
            FAMILIES[1].stored_bounds(),
            vec![25.0, 50.0, 100.0, 200.0, 300.0, 600.0, 1000.0, 2000.0]
        );
        assert_eq!(
            FAMILIES[2].stored_bounds(),
            vec![0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0],
            "1 and 5 are the verdict's loss limits"
        );
        assert_eq!(FAMILIES[0].stored_bounds()[0], 1000.0);
    }

    #[test]
    fn the_text_has_every_family_with_units_converted() {
        let mut out = String::new();
        let rtt = &FAMILIES[1];
        rtt.histogram(FigureCounts {
            le: vec![0, 1, 1, 1, 2, 2, 2, 2],
            sum: 290.0,
            count: 2,
        })
        .render(rtt.name, rtt.help, &mut out);
        render_paths(
            &[
                ("direct".into(), None, 1),
                ("relay".into(), Some("tls".into()), 1),
            ],
            &mut out,
        );
        let has = |line: &str| assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        has("# TYPE parley_call_rtt_seconds histogram");
        has("parley_call_rtt_seconds_bucket{le=\"0.025\"} 0");
        has("parley_call_rtt_seconds_bucket{le=\"0.05\"} 1");
        has("parley_call_rtt_seconds_bucket{le=\"0.3\"} 2");
        has("parley_call_rtt_seconds_bucket{le=\"+Inf\"} 2");
        has("parley_call_rtt_seconds_sum 0.29");
        has("parley_call_rtt_seconds_count 2");
        has("parley_call_reports_total{path=\"direct\",relay_protocol=\"none\"} 1");
        has("parley_call_reports_total{path=\"relay\",relay_protocol=\"tls\"} 1");
        has("parley_call_reports_total{path=\"relay\",relay_protocol=\"udp\"} 0");
    }
}
