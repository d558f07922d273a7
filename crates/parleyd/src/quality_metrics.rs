//! The call quality part of `/metrics` (issue 16): histograms of call setup time, round-trip
//! time and loss, and a counter of reports by path and relay protocol.
//!
//! The figures come from the call log, read at each scrape, so they survive restarts and need
//! no hook in the call driver: a setup time is final once a call is answered, and a party's
//! report once its call ended more than [`REPORT_SETTLED`] ago (the spec's window for the final
//! report), so every sample is counted once and the counts only grow, as Prometheus expects.
//! Bucketing and rendering are pure ([`Histogram`], [`render`]); [`render_metrics`] only reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use parley_store::admin::QualitySamples;

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
    pub bounds: &'static [f64],
    /// `counts[i]`: samples `<= bounds[i]` (cumulative).
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn from_samples(bounds: &'static [f64], samples: impl IntoIterator<Item = f64>) -> Self {
        let mut histogram = Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        };
        for sample in samples {
            if !sample.is_finite() {
                continue;
            }
            for (count, bound) in histogram.counts.iter_mut().zip(bounds) {
                if sample <= *bound {
                    *count += 1;
                }
            }
            histogram.sum += sample;
            histogram.count += 1;
        }
        histogram
    }

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

/// The metrics text of the samples.
pub fn render(samples: &QualitySamples, out: &mut String) {
    Histogram::from_samples(
        SETUP_SECONDS_BUCKETS,
        samples.setup_ms.iter().map(|ms| ms / 1000.0),
    )
    .render(
        "parley_call_setup_seconds",
        "Time from call:initiate to the call being answered, per answered call.",
        out,
    );
    Histogram::from_samples(
        RTT_SECONDS_BUCKETS,
        samples.reports.iter().map(|r| r.rtt_ms / 1000.0),
    )
    .render(
        "parley_call_rtt_seconds",
        "Media round-trip time in each party's last call:stats report, once the call settled.",
        out,
    );
    Histogram::from_samples(
        LOSS_RATIO_BUCKETS,
        samples.reports.iter().map(|r| r.loss_pct / 100.0),
    )
    .render(
        "parley_call_loss_ratio",
        "Packet loss (worse direction, 0-1) in each party's last call:stats report, once the call settled.",
        out,
    );
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
    for report in &samples.reports {
        let protocol = match report.path.as_str() {
            "relay" => report.relay_protocol.as_deref().unwrap_or("unknown"),
            _ => "none",
        };
        *by_path.entry((report.path.as_str(), protocol)).or_default() += 1;
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

/// Reads the samples and appends their metrics; a database error leaves them out (and is
/// logged) rather than failing the whole scrape.
pub async fn render_metrics(state: &AppState, out: &mut String) {
    let settled = REPORT_SETTLED.as_millis() as i64;
    match state
        .store
        .quality_samples(parley_store::unix_millis_now(), settled)
        .await
    {
        Ok(samples) => render(&samples, out),
        Err(error) => log::warn!("metrics: cannot read the call quality figures: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_store::admin::ReportSample;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let histogram = Histogram::from_samples(&[1.0, 2.0, 5.0], [0.5, 1.0, 1.5, 7.0, f64::NAN]);
        assert_eq!(histogram.counts, vec![2, 3, 3]);
        assert_eq!((histogram.count, histogram.sum), (4, 10.0));
    }

    #[test]
    fn the_text_has_every_family_with_units_converted() {
        let samples = QualitySamples {
            setup_ms: vec![2_500.0],
            reports: vec![
                ReportSample {
                    rtt_ms: 40.0,
                    loss_pct: 0.0,
                    path: "direct".into(),
                    relay_protocol: None,
                },
                ReportSample {
                    rtt_ms: 250.0,
                    loss_pct: 8.0,
                    path: "relay".into(),
                    relay_protocol: Some("tls".into()),
                },
            ],
        };
        let mut out = String::new();
        render(&samples, &mut out);
        let has = |line: &str| assert!(out.lines().any(|l| l == line), "{line} in\n{out}");
        has("# TYPE parley_call_setup_seconds histogram");
        has("parley_call_setup_seconds_bucket{le=\"2\"} 0");
        has("parley_call_setup_seconds_bucket{le=\"3\"} 1");
        has("parley_call_setup_seconds_sum 2.5");
        has("parley_call_rtt_seconds_bucket{le=\"0.05\"} 1");
        has("parley_call_rtt_seconds_bucket{le=\"0.3\"} 2");
        has("parley_call_rtt_seconds_count 2");
        has("parley_call_loss_ratio_bucket{le=\"0.05\"} 1");
        has("parley_call_loss_ratio_bucket{le=\"0.1\"} 2");
        has("parley_call_reports_total{path=\"direct\",relay_protocol=\"none\"} 1");
        has("parley_call_reports_total{path=\"relay\",relay_protocol=\"tls\"} 1");
        has("parley_call_reports_total{path=\"relay\",relay_protocol=\"udp\"} 0");
        has("parley_call_setup_seconds_bucket{le=\"+Inf\"} 1");
    }
}
