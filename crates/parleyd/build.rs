//! Builds the web client (web/) into web/dist, which `src/web.rs` embeds.
//!
//! The client is rebuilt only when web/dist is missing or older than its
//! sources, so an ordinary `cargo build` needs npm only after the client changed.
//! web/dist is never committed: a fresh clone builds it here.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// Written last by the client build; after it, this script backdates it to the
/// newest source's mtime. Cargo compares rerun-if-changed paths with the time
/// this script started, so a file dated "now" would make every later `cargo
/// build` rerun the script and recompile the daemon. Watching it (rather than
/// nothing) makes a deleted web/dist trigger a rebuild.
const STAMP: &str = "dist/index.html";

/// What the client build reads (besides node_modules, which `npm ci` manages).
const INPUTS: &[&str] = &[
    "src",
    "package.json",
    "package-lock.json",
    "build.mjs",
    "tsconfig.json",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let web = manifest_dir.join("../../web");
    for input in INPUTS {
        println!("cargo:rerun-if-changed={}", web.join(input).display());
    }
    println!("cargo:rerun-if-changed={}", web.join(STAMP).display());
    println!("cargo:rerun-if-env-changed=PARLEY_NPM");

    let newest_source = INPUTS
        .iter()
        .filter_map(|input| newest_mtime(&web.join(input)))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let stamp = web.join(STAMP);
    let built = fs::metadata(&stamp).and_then(|meta| meta.modified()).ok();
    if built.is_some_and(|built| built >= newest_source) {
        return;
    }

    // PARLEY_NPM lets a packager point at a specific npm (for example one from nvm).
    let npm = env::var("PARLEY_NPM").unwrap_or_else(|_| "npm".to_owned());
    let node_modules_fresh = match (
        newest_mtime(&web.join("node_modules/.package-lock.json")),
        newest_mtime(&web.join("package-lock.json")),
    ) {
        (Some(installed), Some(lock)) => installed >= lock,
        _ => false,
    };
    if !node_modules_fresh {
        run(&npm, &["ci", "--no-audit", "--no-fund"], &web);
    }
    run(&npm, &["run", "build"], &web);

    let stamp_file = fs::File::options()
        .write(true)
        .open(&stamp)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", stamp.display()));
    stamp_file
        .set_modified(newest_source)
        .unwrap_or_else(|error| panic!("cannot set the time of {}: {error}", stamp.display()));
}

fn run(npm: &str, args: &[&str], dir: &Path) {
    let status = Command::new(npm)
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap_or_else(|error| {
            panic!(
                "\n\nbuilding the web client needs npm, and `{npm}` could not be started ({error}).\n\
                 Install Node.js 18 or newer with npm (Debian: `apt-get install nodejs npm`),\n\
                 or set PARLEY_NPM to the npm to use, then build again.\n\n"
            )
        });
    if !status.success() {
        panic!(
            "\n\n`{npm} {}` failed in {} ({status}); its output is above.\n\
             Fix the web client build, then run cargo again.\n\n",
            args.join(" "),
            dir.display()
        );
    }
}

/// The newest modification time of a file, or of any file under a directory.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(path).ok()?;
    let own = meta.modified().ok();
    if !meta.is_dir() {
        return own;
    }
    let children = fs::read_dir(path).ok()?;
    children
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| newest_mtime(&entry.path()))
        .chain(own)
        .max()
}
