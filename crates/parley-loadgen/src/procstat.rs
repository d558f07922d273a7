//! A process's resident memory and CPU time, from `/proc/<pid>/status` and `/proc/<pid>/stat`.

use std::time::{Duration, Instant};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// User plus system CPU time.
    pub cpu: Duration,
    pub threads: u64,
    pub at: Instant,
}

/// Linux reports /proc/<pid>/stat times in USER_HZ, which the kernel ABI fixes at 100.
const TICKS_PER_SECOND: u64 = 100;

pub fn read(pid: u32) -> std::io::Result<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    let cpu_ticks = ticks(11) + ticks(12);
    Ok(Reading {
        rss_kib: field("VmRSS:"),
        cpu: Duration::from_millis(cpu_ticks * 1000 / TICKS_PER_SECOND),
        threads: field("Threads:"),
        at: Instant::now(),
    })
}

/// CPU used between two readings, as a percentage of one core.
pub fn cpu_percent(before: &Reading, after: &Reading) -> f64 {
    let wall = after.at.duration_since(before.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    after.cpu.saturating_sub(before.cpu).as_secs_f64() / wall * 100.0
}

/// The machine's 1-minute load average, to record how busy it was during a measurement.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let reading = read(std::process::id()).expect("/proc/self is readable");
        assert!(reading.rss_kib > 0);
        assert!(reading.threads >= 1);
    }
}
