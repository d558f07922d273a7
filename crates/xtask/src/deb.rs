//! `cargo xtask deb [--no-build] [--deb-version VERSION] [--output DIR]`: builds the release
//! binary and the Debian package with cargo-deb, and returns the path of the .deb (main prints it).
//!
//! The metadata (assets, maintainer scripts, systemd unit) is `[package.metadata.deb]` in
//! crates/parleyd/Cargo.toml; the files it names live in packaging/ and systemd/.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// cargo-deb is pinned: its maintainer-script snippets and asset handling change between
/// releases, and tests/packaging inspects the result closely.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

#[derive(Debug, Default)]
struct Options {
    no_build: bool,
    deb_version: Option<String>,
    output: Option<PathBuf>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--no-build" => options.no_build = true,
            "--deb-version" => {
                options.deb_version =
                    Some(args.next().context("--deb-version needs a value")?.clone())
            }
            "--output" => {
                options.output = Some(args.next().context("--output needs a directory")?.into())
            }
            other => bail!(
                "unknown argument {other:?}; usage: cargo xtask deb [--no-build] \
                 [--deb-version VERSION] [--output DIR]"
            ),
        }
    }
    Ok(options)
}

/// Installs the pinned cargo-deb unless it is already there.
pub fn ensure_cargo_deb() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned());
    if installed
        .as_deref()
        .is_some_and(|version| version.contains(CARGO_DEB_VERSION))
    {
        return Ok(());
    }
    eprintln!("xtask deb: installing cargo-deb {CARGO_DEB_VERSION} (about a minute)");
    run(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Builds the package and returns its path.
pub fn build(args: &[String]) -> anyhow::Result<PathBuf> {
    let options = parse(args)?;
    let root = crate::root();
    ensure_cargo_deb()?;
    let output = options
        .output
        .unwrap_or_else(|| root.join("target").join("debian"));
    std::fs::create_dir_all(&output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    let mut command = Command::new("cargo");
    command
        .current_dir(&root)
        .args(["deb", "--package", "parleyd", "--output"])
        .arg(&output);
    if options.no_build {
        command.arg("--no-build");
    }
    if let Some(version) = &options.deb_version {
        command.args(["--deb-version", version]);
    }
    let printed = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    // cargo-deb prints the package path on stdout and progress on stderr.
    eprint!("{}", String::from_utf8_lossy(&printed.stderr));
    if !printed.status.success() {
        bail!("cargo deb failed with {}", printed.status);
    }
    let path = String::from_utf8_lossy(&printed.stdout)
        .lines()
        .rev()
        .find(|line| line.trim_end().ends_with(".deb"))
        .map(|line| PathBuf::from(line.trim()))
        .context("cargo deb succeeded but printed no .deb path")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn parses_the_options() {
        let options = parse(&strings(&["--no-build", "--deb-version", "1.2-3"])).expect("valid");
        assert!(options.no_build);
        assert_eq!(options.deb_version.as_deref(), Some("1.2-3"));
        assert!(parse(&strings(&["--deb-version"])).is_err());
        assert!(parse(&strings(&["--bogus"])).is_err());
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(crate::root().join("crates/parleyd/Cargo.toml").exists());
    }
}
