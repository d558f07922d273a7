//! The config contract: layering, the documented example file, and every error an admin can hit.

// figment::Jail's closures must return figment::Error, which is large; that is its API.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};

use figment::Jail;
use parley_config::{Config, ConfigError, IceTransportPolicy, Registration, known_keys};

fn repo_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/parley.toml")
}

/// The example file with every `#key = value` line uncommented.
fn example_uncommented() -> String {
    let text = std::fs::read_to_string(repo_example()).expect("config/parley.toml exists");
    text.lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest.to_string(),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn load_err(jail: &Jail, file: &str, text: &str) -> String {
    jail.create_file(file, text).unwrap();
    match Config::load(Some(Path::new(file))) {
        Ok(_) => panic!("expected an error for {text:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn no_file_means_embedded_defaults() {
    Jail::expect_with(|_| {
        let (config, report) = Config::load(None).unwrap();
        assert_eq!(config, Config::default());
        assert!(report.unknown_env.is_empty());
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.turn.listen.to_string(), "127.0.0.1:3478");
        assert_eq!(config.storage.data_dir, PathBuf::from("./data"));
        assert_eq!(config.auth.registration, Registration::Open);
        assert_eq!(config.calls.ring_timeout_secs, 30);
        assert_eq!(config.calls.reconnect_grace_secs, 15);
        Ok(())
    });
}

#[test]
fn example_file_parses_to_the_defaults() {
    Jail::expect_with(|jail| {
        jail.create_file("all.toml", &example_uncommented())?;
        let (config, _) = Config::load(Some(Path::new("all.toml"))).unwrap();
        assert_eq!(config, Config::default());
        Ok(())
    });
}

#[test]
fn example_file_lists_every_key() {
    let text = example_uncommented();
    let table: toml::Table = toml::from_str(&text).expect("the example is valid TOML");
    let mut listed = std::collections::BTreeSet::new();
    for (section, value) in &table {
        listed.insert(section.clone());
        for key in value.as_table().expect("top level holds sections").keys() {
            listed.insert(format!("{section}.{key}"));
        }
    }
    assert_eq!(listed, known_keys(), "config/parley.toml and Config differ");
}

#[test]
fn file_overrides_defaults_and_env_overrides_file() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "parley.toml",
            "[calls]\nring_timeout_secs = 12\nreconnect_grace_secs = 3\n[auth]\nregistration = \"closed\"\n",
        )?;
        jail.set_env("PARLEY_CALLS__RING_TIMEOUT_SECS", "10");
        jail.set_env("PARLEY_WEBRTC__ICE_TRANSPORT_POLICY", "relay");
        let (config, _) = Config::load(Some(Path::new("parley.toml"))).unwrap();
        assert_eq!(config.calls.ring_timeout_secs, 10, "env wins over the file");
        assert_eq!(
            config.calls.reconnect_grace_secs, 3,
            "file wins over defaults"
        );
        assert_eq!(config.auth.registration, Registration::Closed);
        assert_eq!(
            config.webrtc.ice_transport_policy,
            IceTransportPolicy::Relay
        );
        Ok(())
    });
}

#[test]
fn env_overrides_defaults_without_a_file() {
    Jail::expect_with(|jail| {
        jail.set_env("PARLEY_HTTP__LISTEN", "127.0.0.1:9999");
        jail.set_env("PARLEY_TURN__ALLOWED_PEER_RANGES", "[\"127.0.0.0/8\"]");
        let (config, _) = Config::load(None).unwrap();
        assert_eq!(config.http.listen.port(), 9999);
        assert_eq!(
            config.turn.allowed_peer_ranges,
            vec!["127.0.0.0/8".to_string()]
        );
        Ok(())
    });
}

#[test]
fn unknown_env_variable_is_a_warning_not_an_error() {
    Jail::expect_with(|jail| {
        jail.set_env("PARLEY_CALLS__RING_TIMEOUT", "10");
        jail.set_env("PARLEY_CONFIG", "/nonexistent-is-fine-here");
        let (config, report) = Config::load(None).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(
            report.unknown_env,
            vec!["PARLEY_CALLS__RING_TIMEOUT".to_string()]
        );
        Ok(())
    });
}

#[test]
fn wrong_type_names_file_key_and_value() {
    Jail::expect_with(|jail| {
        let message = load_err(
            jail,
            "parley.toml",
            "[calls]\nring_timeout_secs = \"ten\"\n",
        );
        assert!(
            message.contains("parley.toml: calls.ring_timeout_secs: expected"),
            "{message}"
        );
        assert!(message.contains("integer"), "{message}");
        assert!(message.contains("\"ten\""), "{message}");
        Ok(())
    });
}

#[test]
fn wrong_type_from_env_names_the_variable() {
    Jail::expect_with(|jail| {
        jail.set_env("PARLEY_CALLS__RING_TIMEOUT_SECS", "soon");
        let message = Config::load(None).unwrap_err().to_string();
        assert!(
            message.contains("PARLEY_CALLS__RING_TIMEOUT_SECS"),
            "{message}"
        );
        assert!(message.contains("calls.ring_timeout_secs"), "{message}");
        Ok(())
    });
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    Jail::expect_with(|jail| {
        let message = load_err(jail, "parley.toml", "[calls]\nring_timeout = 10\n");
        assert!(message.contains("parley.toml"), "{message}");
        assert!(
            message.contains("parley.toml: calls.ring_timeout: unknown key"),
            "{message}"
        );
        Ok(())
    });
}

#[test]
fn unknown_section_is_an_error() {
    Jail::expect_with(|jail| {
        let message = load_err(jail, "parley.toml", "[cals]\nring_timeout_secs = 10\n");
        assert!(
            message.contains("parley.toml: cals: unknown key"),
            "{message}"
        );
        Ok(())
    });
}

#[test]
fn bad_enum_value_lists_the_choices() {
    Jail::expect_with(|jail| {
        let message = load_err(jail, "p.toml", "[auth]\nregistration = \"maybe\"\n");
        assert!(message.contains("p.toml: auth.registration"), "{message}");
        assert!(
            message.contains("open") && message.contains("closed"),
            "{message}"
        );
        Ok(())
    });
}

#[test]
fn malformed_toml_names_the_file() {
    Jail::expect_with(|jail| {
        let message = load_err(jail, "broken.toml", "[calls\nring_timeout_secs = 10\n");
        assert!(message.contains("broken.toml"), "{message}");
        Ok(())
    });
}

#[test]
fn bad_listen_address_is_named() {
    Jail::expect_with(|jail| {
        let message = load_err(jail, "p.toml", "[http]\nlisten = \"localhost\"\n");
        assert!(message.contains("p.toml: http.listen"), "{message}");
        Ok(())
    });
}

#[test]
fn missing_named_file_is_an_error() {
    Jail::expect_with(|_| {
        let error = Config::load(Some(Path::new("nope.toml"))).unwrap_err();
        assert!(matches!(error, ConfigError::FileNotFound { .. }));
        assert!(
            error
                .to_string()
                .contains("nope.toml: config file not found")
        );
        Ok(())
    });
}

#[test]
fn plain_http_off_loopback_is_refused_with_the_reason() {
    Jail::expect_with(|jail| {
        let message = load_err(jail, "p.toml", "[http]\nlisten = \"0.0.0.0:8080\"\n");
        assert!(message.contains("p.toml: http.listen"), "{message}");
        assert!(message.contains("camera"), "{message}");
        assert!(message.contains("tls.enabled"), "{message}");
        jail.create_file(
            "q.toml",
            "[http]\nlisten = \"0.0.0.0:8080\"\nallow_plain_http = true\n",
        )?;
        Config::load(Some(Path::new("q.toml"))).expect("allowed explicitly");
        Ok(())
    });
}

#[test]
fn semantic_errors_are_all_reported_at_once() {
    Jail::expect_with(|jail| {
        let message = load_err(
            jail,
            "p.toml",
            "[turn]\nrelay_ports = \"9-5\"\nrelay_address = \"nowhere\"\ntls_listen = \"x\"\n[calls]\nring_timeout_secs = 0\n",
        );
        for key in [
            "turn.relay_ports",
            "turn.relay_address",
            "turn.tls_listen",
            "calls.ring_timeout_secs",
        ] {
            assert!(
                message.contains(&format!("p.toml: {key}:")),
                "{key} missing in {message}"
            );
        }
        Ok(())
    });
}

#[test]
fn relay_address_v6_must_be_ipv6_and_extra_udp_listeners_are_addresses() {
    Jail::expect_with(|jail| {
        let message = load_err(
            jail,
            "p.toml",
            "[turn]\nrelay_address_v6 = \"203.0.113.7\"\n",
        );
        assert!(
            message.contains("p.toml: turn.relay_address_v6: expected an IPv6 address"),
            "{message}"
        );
        let message = load_err(jail, "q.toml", "[turn]\nudp_listen_extra = [\"443\"]\n");
        assert!(message.contains("turn.udp_listen_extra"), "{message}");
        jail.create_file(
            "r.toml",
            "[turn]\nudp_listen_extra = [\"0.0.0.0:443\", \"[::]:443\"]\nrelay_address_v6 = \"2001:db8::7\"\n",
        )?;
        let (config, _) = Config::load(Some(Path::new("r.toml"))).expect("valid");
        assert_eq!(
            config.turn.udp_listen_extra,
            ["0.0.0.0:443".parse().unwrap(), "[::]:443".parse().unwrap()]
        );
        assert_eq!(config.turn.relay_address_v6, "2001:db8::7");
        Ok(())
    });
}

#[test]
fn public_host_on_all_interfaces_falls_back_to_the_relay_address() {
    let mut config = Config::default();
    assert_eq!(config.turn.effective_public_host(), "127.0.0.1");
    config.turn.listen = "0.0.0.0:3478".parse().unwrap();
    config.turn.relay_address = "203.0.113.7".into();
    assert_eq!(config.turn.effective_public_host(), "203.0.113.7");
    assert_eq!(
        config.turn.effective_relay_address().to_string(),
        "203.0.113.7"
    );
    config.turn.public_host = "turn.example.org".into();
    assert_eq!(config.turn.effective_public_host(), "turn.example.org");
}

#[test]
fn redacted_output_hides_secrets() {
    let mut config = Config::default();
    config.turn.secret = "hunter2-very-secret".into();
    config.turn.previous_secrets = vec!["old-secret".into()];
    let shown = config.to_redacted_toml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("old-secret"), "{shown}");
    assert!(shown.contains("<redacted>"));
    let reparsed: toml::Table = toml::from_str(&shown).expect("check-config output is TOML");
    assert!(reparsed.contains_key("calls"));
}

#[test]
fn acme_needs_https_and_a_public_dns_name() {
    Jail::expect_with(|jail| {
        let message = load_err(jail, "a.toml", "[tls]\nacme = true\n");
        assert!(message.contains("a.toml: tls.acme"), "{message}");
        assert!(message.contains("tls.enabled = true"), "{message}");
        assert!(message.contains("http.public_url"), "{message}");
        let message = load_err(
            jail,
            "b.toml",
            "[http]\npublic_url = \"https://192.0.2.1\"\n[tls]\nenabled = true\nacme = true\n",
        );
        assert!(message.contains("an IP address"), "{message}");
        jail.create_file(
            "c.toml",
            "[http]\npublic_url = \"https://Call.Example.org:8443/\"\nredirect_listen = \"0.0.0.0:80\"\n\
             [tls]\nenabled = true\nacme = true\nacme_email = \"admin@example.org\"\n",
        )?;
        let (config, _) = Config::load(Some(Path::new("c.toml"))).expect("valid");
        assert!(config.tls.acme);
        assert_eq!(config.http.redirect_listen, "0.0.0.0:80");
        assert_eq!(
            parley_config::acme_host(&config.http.public_url).as_deref(),
            Some("call.example.org")
        );
        let message = load_err(jail, "d.toml", "[http]\nredirect_listen = \"80\"\n");
        assert!(
            message.contains("d.toml: http.redirect_listen"),
            "{message}"
        );
        Ok(())
    });
}
