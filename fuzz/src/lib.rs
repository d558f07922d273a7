//! Helpers shared by the fuzz targets.

use std::path::PathBuf;

/// A scratch directory for this fuzzing process, `$TMPDIR/parley-fuzz-<what>-<pid>`.
///
/// libFuzzer ends a process with `exit()`, so nothing dropped at the end of a run can clean up.
/// Instead each new process removes the directories of earlier processes that have exited: a
/// crash or a killed run leaves at most one directory behind, until the next run.
pub fn scratch_dir(what: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    let prefix = format!("parley-fuzz-{what}-");
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let alive = pid
                .parse::<u32>()
                .is_ok_and(|pid| std::path::Path::new("/proc").join(pid.to_string()).exists());
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create the scratch directory {}: {e}", dir.display()));
    dir
}
