//! The TOML config loader, `parley_config::Config::load`, on arbitrary file contents.
//!
//! The file is the admin's, not a stranger's, but a typo must give an error naming the key, never
//! a panic. Drives the real loader (defaults, then the file, then `PARLEY_*`, then validation)
//! through a real file, as `parley serve --config` does.
//!
//! Properties checked: no panic; an error has a message; an accepted config's derived values
//! (port range, addresses, public URL) compute without panicking and are consistent; and the
//! effective config it prints (`parley config`) loads again.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use parley_config::Config;

static FILES: LazyLock<(PathBuf, PathBuf)> = LazyLock::new(|| {
    let dir = parley_fuzz::scratch_dir("config");
    (dir.join("parley.toml"), dir.join("effective.toml"))
});

fuzz_target!(|data: &[u8]| {
    let (file, effective) = &*FILES;
    std::fs::write(file, data).expect("the scratch file is writable");
    match Config::load(Some(file)) {
        Err(error) => {
            assert!(!error.to_string().is_empty(), "an error without a message");
        }
        Ok((config, _report)) => {
            let (low, high) = config.turn.relay_port_range();
            assert!(low <= high, "relay port range {low}-{high} accepted");
            let _ = config.turn.tls_listen_addr();
            let _ = config.turn.effective_public_host();
            let _ = config.turn.effective_relay_address();
            let _ = config.public_url();
            let _ = config.storage.database_path();
            let printed = config.to_redacted_toml();
            std::fs::write(effective, &printed).expect("the scratch file is writable");
            if let Err(error) = Config::load(Some(effective)) {
                panic!(
                    "the effective config of an accepted file does not load:\n{error}\n---\n{printed}"
                );
            }
        }
    }
});
