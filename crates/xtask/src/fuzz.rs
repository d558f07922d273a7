//! `cargo xtask fuzz [TARGET...] [--secs N] [--runs N]`: builds the fuzz targets in `fuzz/`
//! (cargo-fuzz, libFuzzer) and runs each for a while, starting from its committed seeds.
//!
//! The CI stage `fuzz` runs every target for [`CI_SECS`]: a parser change that makes a committed
//! seed (or a crash input kept as a seed) fail, or that crashes within seconds, fails CI. Long
//! campaigns use the same command with `--secs 3600 --runs 10000000` (docs/security.md).
//!
//! libFuzzer needs `-Z` sanitizer flags; `RUSTC_BOOTSTRAP=1` lets the stable toolchain take them,
//! so no nightly toolchain is needed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::{have, root};

/// Every target, named `<area>_<what>`; each has `fuzz/fuzz_targets/<name>.rs`,
/// `fuzz/seeds/<name>/` and `fuzz/dict/<name>.dict`.
pub const TARGETS: &[&str] = &[
    "turn_request",
    "turn_channel_data",
    "turn_stream_framing",
    "sio_payload",
    "http_api",
    "config_toml",
    "front_door",
];

/// Seconds per target in `cargo xtask ci`.
pub const CI_SECS: u64 = 20;

/// The cargo-fuzz that `cargo xtask ci deps` installs.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// One build for short and long runs alike: release with debug assertions and overflow checks
/// (a wrapped integer is a bug even where release would not panic), no sanitizer (the parsers
/// are safe Rust; ASan would halve the executions), 16 codegen units (the build is most of a CI
/// run; the executions lose little).
const BUILD_FLAGS: &[&str] = &[
    "-O",
    "-s",
    "none",
    "--debug-assertions",
    "--codegen-units",
    "16",
];

/// Installs cargo-fuzz when it is missing (`cargo xtask ci deps`).
pub fn install_cargo_fuzz() -> anyhow::Result<()> {
    if have("cargo-fuzz") {
        return Ok(());
    }
    crate::run(
        "cargo",
        &[
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ],
    )
}

struct Options {
    targets: Vec<&'static str>,
    secs: u64,
    runs: Option<u64>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        targets: Vec::new(),
        secs: CI_SECS,
        runs: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> anyhow::Result<u64> {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a number"))?;
            value
                .parse()
                .with_context(|| format!("{flag} {value:?}: expected a whole number"))
        };
        match arg.as_str() {
            "--secs" => options.secs = number("--secs")?,
            "--runs" => options.runs = Some(number("--runs")?),
            name => match TARGETS.iter().find(|t| **t == name) {
                Some(target) => options.targets.push(target),
                None => bail!(
                    "unknown fuzz target or option {name:?}; targets: {}; options: --secs N, --runs N",
                    TARGETS.join(" ")
                ),
            },
        }
    }
    if options.targets.is_empty() {
        options.targets = TARGETS.to_vec();
    }
    if options.secs == 0 {
        bail!("--secs must be at least 1");
    }
    Ok(options)
}

/// What libFuzzer said about one run.
#[derive(Default)]
struct Figures {
    execs: Option<u64>,
    exec_per_sec: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<u64>,
    artifact: Option<String>,
}

impl Figures {
    /// Reads `#N DONE cov: X ft: Y corp: A/Bb ...`, `stat::number_of_executed_units: N`,
    /// `stat::average_exec_per_sec: N` and `Test unit written to PATH`.
    fn read(&mut self, line: &str) {
        let field = |name: &str| -> Option<u64> {
            let mut words = line.split_whitespace();
            words.find(|w| *w == name)?;
            let value = words.next()?;
            value.split('/').next()?.parse().ok()
        };
        if line.starts_with('#') && (line.contains("DONE") || line.contains("pulse")) {
            self.cov = field("cov:").or(self.cov);
            self.ft = field("ft:").or(self.ft);
            self.corpus = field("corp:").or(self.corpus);
        }
        if let Some(value) = line.strip_prefix("stat::number_of_executed_units:") {
            self.execs = value.trim().parse().ok();
        }
        if let Some(value) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.exec_per_sec = value.trim().parse().ok();
        }
        if let Some(path) = line.split("Test unit written to ").nth(1) {
            self.artifact = Some(path.trim().to_owned());
        }
    }
}

fn show(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The vendored crates a manifest patches in, by name, with their paths from the repository
/// root (`fuzz/Cargo.toml`'s are relative to `fuzz/`).
fn patches(manifest: &str, dir: &str) -> anyhow::Result<Vec<(String, String)>> {
    let manifest: toml::Table = manifest.parse()?;
    let Some(table) = manifest
        .get("patch")
        .and_then(|patch| patch.get("crates-io"))
        .and_then(toml::Value::as_table)
    else {
        return Ok(Vec::new());
    };
    let mut patches = Vec::new();
    for (name, patch) in table {
        let path = patch
            .get("path")
            .and_then(toml::Value::as_str)
            .with_context(|| format!("the patch for {name} has no path"))?;
        let from_root = Path::new(dir).join(path);
        let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
        for part in from_root.components() {
            match part {
                std::path::Component::ParentDir => {
                    parts.pop();
                }
                std::path::Component::CurDir => {}
                other => parts.push(other.as_os_str()),
            }
        }
        let parts: Vec<_> = parts.iter().map(|p| p.to_string_lossy()).collect();
        patches.push((name.clone(), parts.join("/")));
    }
    Ok(patches)
}

/// The fuzz targets are a workspace of their own (cargo-fuzz builds them alone), which the
/// root manifest's `[patch.crates-io]` does not reach: `fuzz/Cargo.toml` repeats it, and a
/// vendored crate missing there means the fuzzed daemon is not the shipped one (it happened:
/// the tungstenite patches were missing from the fuzz build for weeks). Checked before every
/// fuzz build and by this crate's tests, so a new patch fails the cargo stage of CI first.
pub fn check_patches(root_manifest: &str, fuzz_manifest: &str) -> anyhow::Result<()> {
    let shipped = patches(root_manifest, "").context("Cargo.toml")?;
    let fuzzed = patches(fuzz_manifest, "fuzz").context("fuzz/Cargo.toml")?;
    let mut problems = Vec::new();
    for (name, path) in &shipped {
        match fuzzed.iter().find(|(fuzzed, _)| fuzzed == name) {
            None => problems.push(format!("{name} ({path}) is not patched in fuzz/Cargo.toml")),
            Some((_, fuzzed)) if fuzzed != path => problems.push(format!(
                "{name} comes from {fuzzed} in fuzz/Cargo.toml, from {path} in Cargo.toml"
            )),
            Some(_) => {}
        }
    }
    for (name, path) in &fuzzed {
        if !shipped.iter().any(|(shipped, _)| shipped == name) {
            problems.push(format!(
                "{name} ({path}) is patched in fuzz/Cargo.toml only"
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the fuzz workspace must patch the crates the daemon is built with \
             ([patch.crates-io] in Cargo.toml and fuzz/Cargo.toml): {}",
            problems.join("; ")
        );
    }
    Ok(())
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let options = parse(args)?;
    if !have("cargo-fuzz") {
        bail!(
            "cargo-fuzz is not installed: run `cargo xtask ci deps` (or `cargo install cargo-fuzz \
             --locked --version {CARGO_FUZZ_VERSION}`)"
        );
    }
    let fuzz = root().join("fuzz");
    check_patches(
        &read(&root().join("Cargo.toml"))?,
        &read(&fuzz.join("Cargo.toml"))?,
    )?;
    let start = Instant::now();
    let mut build = vec!["fuzz", "build"];
    build.extend(BUILD_FLAGS);
    eprintln!("$ RUSTC_BOOTSTRAP=1 cargo {}", build.join(" "));
    let status = Command::new("cargo")
        .args(&build)
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(root())
        .status()
        .context("cannot run cargo fuzz")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    let build_secs = start.elapsed().as_secs();
    eprintln!("fuzz targets built in {build_secs} s");

    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for target in &options.targets {
        let (ok, figures, secs) = run_target(&fuzz, target, &options)?;
        if !ok {
            failed.push(*target);
        }
        rows.push((*target, ok, figures, secs));
    }

    println!(
        "\n{:<20} {:>6} {:>12} {:>8} {:>6} {:>7} {:>7}  result",
        "target", "secs", "execs", "exec/s", "cov", "ft", "corpus"
    );
    for (target, ok, f, secs) in &rows {
        let result = match (ok, &f.artifact) {
            (true, _) => "ok".to_owned(),
            (false, Some(path)) => format!("CRASH {path}"),
            (false, None) => "FAILED".to_owned(),
        };
        println!(
            "{target:<20} {secs:>6} {:>12} {:>8} {:>6} {:>7} {:>7}  {result}",
            show(f.execs),
            show(f.exec_per_sec),
            show(f.cov),
            show(f.ft),
            show(f.corpus),
        );
    }
    println!(
        "build {build_secs} s, total {} s",
        start.elapsed().as_secs()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        bail!(
            "fuzz target(s) failed: {} (reproduce: fuzz/target/x86_64-unknown-linux-gnu/release/\
             <target> <crash file>; see docs/security.md)",
            failed.join(" ")
        )
    }
}

fn run_target(
    fuzz: &Path,
    target: &str,
    options: &Options,
) -> anyhow::Result<(bool, Figures, u64)> {
    let binary = fuzz
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(target);
    // New inputs go to the first directory, outside the repository; the seeds stay as committed.
    let corpus = fuzz.join("target/corpus").join(target);
    let seeds = fuzz.join("seeds").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if !seeds.is_dir() {
        bail!("{target} has no seed corpus {}", seeds.display());
    }
    let mut args = vec![
        path_arg(&corpus),
        path_arg(&seeds),
        format!("-max_total_time={}", options.secs),
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".to_owned(),
        // A single input taking this long is a hang worth a report (the machine may be loaded).
        "-timeout=20".to_owned(),
    ];
    let dict = fuzz.join("dict").join(format!("{target}.dict"));
    if dict.exists() {
        args.push(format!("-dict={}", dict.display()));
    }
    if let Some(runs) = options.runs {
        args.push(format!("-runs={runs}"));
    }
    eprintln!("\n=== fuzz {target} ({} s)", options.secs);
    eprintln!("$ {} {}", binary.display(), args.join(" "));
    let start = Instant::now();
    let mut child = Command::new(&binary)
        .args(&args)
        .current_dir(root())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut figures = Figures::default();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("cannot read the fuzzer's output")?;
        figures.read(&line);
        // libFuzzer prints a line per new input; keep the rest (start, pulses, the end, and a
        // crash's panic message and backtrace).
        let progress = line.starts_with('#') && (line.contains("NEW") || line.contains("REDUCE"));
        if !progress {
            eprintln!("{line}");
        }
    }
    let status = child.wait().context("cannot wait for the fuzzer")?;
    let secs = start.elapsed().as_secs();
    if !status.success() {
        eprintln!("--- {target} failed ({status})");
    }
    Ok((status.success(), figures, secs))
}

fn path_arg(path: &Path) -> String {
    path.to_str()
        .expect("the repository path is UTF-8")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = r#"
[workspace]
[patch.crates-io]
engineioxide = { path = "vendor/engineioxide" }
tungstenite = { path = "vendor/tungstenite" }
"#;

    #[test]
    fn the_fuzz_workspace_patches_the_crates_the_daemon_is_built_with() {
        let root = root();
        check_patches(
            &read(&root.join("Cargo.toml")).unwrap(),
            &read(&root.join("fuzz/Cargo.toml")).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    #[test]
    fn the_same_patches_from_the_fuzz_directory_pass() {
        let fuzz = r#"
[patch.crates-io]
tungstenite = { path = "../vendor/tungstenite" }
engineioxide = { path = "./../vendor/engineioxide" }
"#;
        check_patches(SHIPPED, fuzz).unwrap();
    }

    #[test]
    fn a_patch_missing_from_the_fuzz_workspace_is_named() {
        let fuzz = r#"
[patch.crates-io]
engineioxide = { path = "../vendor/engineioxide" }
"#;
        let error = check_patches(SHIPPED, fuzz).unwrap_err().to_string();
        assert!(
            error.contains("tungstenite (vendor/tungstenite) is not patched in fuzz/Cargo.toml"),
            "{error}"
        );
        let error = check_patches(SHIPPED, "").unwrap_err().to_string();
        assert!(error.contains("engineioxide"), "{error}");
    }

    #[test]
    fn a_patch_from_another_path_or_only_in_the_fuzz_workspace_is_named() {
        let fuzz = r#"
[patch.crates-io]
engineioxide = { path = "vendor/engineioxide" }
tungstenite = { path = "../vendor/tungstenite" }
socketioxide = { path = "../vendor/socketioxide" }
"#;
        let error = check_patches(SHIPPED, fuzz).unwrap_err().to_string();
        assert!(
            error.contains(
                "engineioxide comes from fuzz/vendor/engineioxide in fuzz/Cargo.toml, \
                 from vendor/engineioxide in Cargo.toml"
            ),
            "{error}"
        );
        assert!(
            error.contains("socketioxide (vendor/socketioxide) is patched in fuzz/Cargo.toml only"),
            "{error}"
        );
    }
}
