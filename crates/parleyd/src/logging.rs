//! Logging through the `log` facade: to the journal when systemd started us (it sets
//! `JOURNAL_STREAM`), else to stderr.
//!
//! systemd-journal-logger has no per-module filter, and the `turn` crate logs every malformed
//! packet at ERROR: one attacker could flood the journal at line rate. So every record passes a
//! [`Filter`] that applies the level and caps chatty third-party targets at a few lines a minute.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};
use parley_config::LogLevel;

/// Targets whose records are rate-limited: third-party network code that logs per packet.
const NOISY_TARGETS: &[&str] = &[
    "turn",
    "stun",
    "webrtc_util",
    "socketioxide",
    "engineioxide",
];
/// Records a noisy target may log per window before the rest are counted and dropped.
const NOISY_BUDGET: u32 = 20;
const NOISY_WINDOW: Duration = Duration::from_secs(60);

pub fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
        LogLevel::Trace => LevelFilter::Trace,
    }
}

/// Installs the global logger. Safe to call once; later calls are ignored.
pub fn init(level: LogLevel) {
    let max = level_filter(level);
    let inner: Box<dyn Log> = if std::env::var_os("JOURNAL_STREAM").is_some()
        && systemd_journal_logger::connected_to_journal()
    {
        match systemd_journal_logger::JournalLog::new() {
            Ok(journal) => Box::new(journal),
            Err(_) => Box::new(Stderr),
        }
    } else {
        Box::new(Stderr)
    };
    let filter = Filter {
        inner,
        max,
        noisy: Mutex::new(NoisyState {
            window_start: Instant::now(),
            logged: 0,
            dropped: 0,
        }),
    };
    if log::set_boxed_logger(Box::new(filter)).is_ok() {
        log::set_max_level(max);
    }
}

struct Filter {
    inner: Box<dyn Log>,
    max: LevelFilter,
    noisy: Mutex<NoisyState>,
}

struct NoisyState {
    window_start: Instant,
    logged: u32,
    dropped: u64,
}

fn is_noisy(target: &str) -> bool {
    NOISY_TARGETS
        .iter()
        .any(|t| target == *t || target.strip_prefix(t).is_some_and(|r| r.starts_with("::")))
}

impl Log for Filter {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Third-party network crates are quiet at INFO: their INFO is per-connection chatter.
        let max = if is_noisy(metadata.target()) {
            self.max.min(LevelFilter::Warn)
        } else {
            self.max
        };
        metadata.level() <= max
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if is_noisy(record.target()) {
            let mut state = self
                .noisy
                .lock()
                .expect("the logger never panics while holding this");
            if state.window_start.elapsed() >= NOISY_WINDOW {
                if state.dropped > 0 {
                    self.inner.log(
                        &Record::builder()
                            .level(Level::Warn)
                            .target("parley::logging")
                            .args(format_args!(
                                "suppressed {} log lines from the relay and socket libraries in the last minute",
                                state.dropped
                            ))
                            .build(),
                    );
                }
                state.window_start = Instant::now();
                state.logged = 0;
                state.dropped = 0;
            }
            if state.logged >= NOISY_BUDGET {
                state.dropped += 1;
                return;
            }
            state.logged += 1;
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Plain lines on stderr: `LEVEL target: message`. Timestamps are left to whoever collects
/// stderr (a terminal does not need them; journald and container runtimes add their own).
struct Stderr;

impl Log for Stderr {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "{:<5} {}: {}",
            record.level(),
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_targets_match_whole_path_segments() {
        assert!(is_noisy("turn"));
        assert!(is_noisy("turn::server"));
        assert!(is_noisy("webrtc_util::conn"));
        assert!(!is_noisy("turnstile"));
        assert!(!is_noisy("parley::relay"));
    }
}
