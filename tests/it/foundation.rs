//! The daemon as an admin meets it: embedded defaults, config errors, the admin CLI, start-up
//! failures that name what to fix, readiness notification, and a clean shutdown.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::daemon::{Daemon, free_port, http, parley, parley_binary};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn with_no_config_it_serves_on_localhost_with_data_under_dot_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(parley_binary())
        .current_dir(dir.path())
        .env_remove("PARLEY_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address = "127.0.0.1:8080".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut healthy = false;
    while Instant::now() < deadline && !healthy {
        healthy = matches!(http(address, "GET", "/healthz", None, None), Ok((200, _)));
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready = http(address, "GET", "/readyz", None, None);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        healthy,
        "no /healthz on 127.0.0.1:8080 (is something else using the port?)"
    );
    let (status, body) = ready.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body["listeners"].to_string().contains("127.0.0.1:3478"),
        "{body}"
    );
    assert!(dir.path().join("data/parley.db").exists());
    let secret = dir.path().join("data/turn_secret");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the generated TURN secret is private");
    assert!(std::fs::read_to_string(&secret).unwrap().trim().len() >= 32);
}

#[test]
fn the_generated_turn_secret_survives_restarts() {
    let mut daemon = Daemon::start("");
    let path = daemon.data_dir().join("turn_secret");
    let first = std::fs::read_to_string(&path).unwrap();
    assert!(
        daemon
            .stop_with(Signal::SIGTERM, Duration::from_secs(10))
            .success()
    );
    let daemon = daemon.spawn(&[]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
    assert!(!daemon.log().is_empty());
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parley.toml");
    std::fs::write(
        &path,
        "[turn]\nsecret = \"do-not-print-me\"\n[calls]\nring_timeout_secs = 7\n",
    )
    .unwrap();
    let output = parley(Some(&path), &["check-config"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("ring_timeout_secs = 7"), "{text}");
    assert!(!text.contains("do-not-print-me"), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
}

#[test]
fn a_broken_config_exits_2_naming_file_key_and_problem_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parley.toml");
    let port = free_port();
    std::fs::write(
        &path,
        format!("[http]\nlisten = \"127.0.0.1:{port}\"\n[calls]\nring_timeout_secs = \"ten\"\n"),
    )
    .unwrap();
    for args in [&["check-config"][..], &["serve"][..]] {
        let output = parley(Some(&path), args, None);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let message = stderr(&output);
        assert!(
            message.contains("parley.toml: calls.ring_timeout_secs: expected a non-negative integer, found string \"ten\""),
            "{message}"
        );
    }
    assert!(
        http(
            format!("127.0.0.1:{port}").parse().unwrap(),
            "GET",
            "/healthz",
            None,
            None
        )
        .is_err()
    );
}

#[test]
fn env_overrides_reach_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(parley_binary())
        .arg("check-config")
        .current_dir(dir.path())
        .env_remove("PARLEY_CONFIG")
        .env("PARLEY_CALLS__RING_TIMEOUT_SECS", "10")
        .env("PARLEY_AUTH__REGISTRATION", "closed")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("ring_timeout_secs = 10"), "{text}");
    assert!(text.contains("registration = \"closed\""), "{text}");
}

#[test]
fn a_port_in_use_fails_naming_the_address_and_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let daemon = Daemon::configure(&format!("[http]\nlisten = \"{address}\"\n"));
    let output = parley(Some(&daemon.config_path), &["serve"], None);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains(&address.to_string()), "{message}");
    assert!(message.contains("http.listen"), "{message}");
    assert!(message.contains("in use"), "{message}");
}

#[test]
fn a_turn_port_in_use_fails_naming_turn_listen() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let daemon = Daemon::configure(&format!("[turn]\nlisten = \"{address}\"\n"));
    let output = parley(Some(&daemon.config_path), &["serve"], None);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains(&address.to_string()), "{message}");
    assert!(message.contains("turn.listen"), "{message}");
}

#[test]
fn an_unusable_data_directory_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let data_dir = file.join("data");
    let daemon = Daemon::configure(&format!(
        "[storage]\ndata_dir = \"{}\"\n",
        data_dir.display()
    ));
    let output = parley(Some(&daemon.config_path), &["serve"], None);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains(&data_dir.display().to_string()),
        "{message}"
    );
    assert!(message.contains("storage.data_dir"), "{message}");
}

#[test]
fn a_corrupt_database_fails_naming_the_file_and_what_to_do() {
    let daemon = Daemon::configure("");
    std::fs::create_dir_all(daemon.data_dir()).unwrap();
    let db = daemon.data_dir().join("parley.db");
    std::fs::write(&db, vec![0x5au8; 16384]).unwrap();
    let output = parley(Some(&daemon.config_path), &["serve"], None);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains(&db.display().to_string()), "{message}");
    assert!(message.contains("backup"), "{message}");
}

#[test]
fn user_commands_work_on_the_database_of_a_running_daemon() {
    let daemon = Daemon::start("");
    let config = Some(daemon.config_path.as_path());
    let login = |password: &str| {
        daemon
            .request(
                "POST",
                "/api/v1/auth/login",
                Some(&format!(
                    r#"{{"username":"alice","password":"{password}"}}"#
                )),
                None,
            )
            .0
    };

    let added = parley(
        config,
        &[
            "user",
            "add",
            "alice",
            "--display-name",
            "Alice Liddell",
            "--password-stdin",
        ],
        Some("first-password\n"),
    );
    assert!(added.status.success(), "{}", stderr(&added));
    assert_eq!(login("first-password"), 200);

    let listed = parley(config, &["user", "list"], None);
    let text = stdout(&listed);
    assert!(
        text.contains("alice") && text.contains("Alice Liddell") && text.contains("enabled"),
        "{text}"
    );

    let duplicate = parley(
        config,
        &["user", "add", "ALICE", "--password-stdin"],
        Some("whatever-1\n"),
    );
    assert_eq!(duplicate.status.code(), Some(1));
    assert!(
        stderr(&duplicate).contains("taken"),
        "{}",
        stderr(&duplicate)
    );

    let changed = parley(
        config,
        &["user", "passwd", "alice", "--password-stdin"],
        Some("second-password\n"),
    );
    assert!(changed.status.success(), "{}", stderr(&changed));
    assert_eq!(login("first-password"), 401);
    assert_eq!(login("second-password"), 200);

    let (_, session) = daemon.request(
        "POST",
        "/api/v1/auth/login",
        Some(r#"{"username":"alice","password":"second-password"}"#),
        None,
    );
    let token = session["token"].as_str().unwrap().to_owned();
    assert_eq!(
        daemon.request("GET", "/api/v1/me", None, Some(&token)).0,
        200
    );
    let disabled = parley(config, &["user", "disable", "alice"], None);
    assert!(disabled.status.success(), "{}", stderr(&disabled));
    assert_eq!(login("second-password"), 401);
    assert_eq!(
        daemon.request("GET", "/api/v1/me", None, Some(&token)).0,
        401,
        "disabling ends sessions"
    );
    assert!(stdout(&parley(config, &["user", "list"], None)).contains("disabled"));

    let enabled = parley(config, &["user", "disable", "--enable", "alice"], None);
    assert!(enabled.status.success());
    assert_eq!(login("second-password"), 200);

    let generated = parley(config, &["user", "add", "bob"], None);
    let text = stdout(&generated);
    let password = text
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("a generated password is printed")
        .to_owned();
    let (status, _) = daemon.request(
        "POST",
        "/api/v1/auth/login",
        Some(&format!(r#"{{"username":"bob","password":"{password}"}}"#)),
        None,
    );
    assert_eq!(status, 200);

    let removed = parley(config, &["user", "remove", "alice"], None);
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert_eq!(login("second-password"), 401);
    assert!(!stdout(&parley(config, &["user", "list"], None)).contains("alice"));

    let missing = parley(
        config,
        &["user", "passwd", "nobody", "--password-stdin"],
        Some("whatever-1\n"),
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("nobody"));
}

#[test]
fn sigterm_shuts_down_in_time_and_leaves_a_consistent_database() {
    let mut daemon = Daemon::start("");
    let tokens: Vec<String> = (0..5)
        .map(|i| daemon.register(&format!("user{i}")))
        .collect();
    // Keep the daemon busy with requests while the signal arrives.
    let address = daemon.http;
    let busy = std::thread::spawn(move || {
        for i in 0..50 {
            let _ = http(
                address,
                "POST",
                "/api/v1/auth/login",
                Some(&format!(
                    r#"{{"username":"user{}","password":"password-user{}"}}"#,
                    i % 5,
                    i % 5
                )),
                None,
            );
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let status = daemon.stop_with(Signal::SIGTERM, Duration::from_secs(10));
    let _ = busy.join();
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status}\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );

    let db = daemon.data_dir().join("parley.db");
    let wal = daemon.data_dir().join("parley.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(
        wal_len, 0,
        "the WAL was checkpointed into the database at shutdown"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = parley_store::Store::open(&db).await.unwrap();
        assert_eq!(store.integrity_check().await.unwrap(), "ok");
        assert_eq!(store.list_users().await.unwrap().len(), 5);
        assert!(
            store.session_user(&tokens[0]).await.unwrap().is_some(),
            "sessions survive a restart"
        );
    });
}

#[test]
fn readiness_is_notified_only_once_every_listener_is_bound() {
    let daemon = Daemon::configure("");
    let socket_path = daemon.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let socket = socket_path.to_str().unwrap().to_owned();
    let (http_address, turn_address) = (daemon.http, daemon.turn);
    let started = Instant::now();
    let mut daemon =
        daemon.spawn_without_waiting(&[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "200000")]);

    let mut buffer = [0u8; 4096];
    let mut messages = Vec::new();
    loop {
        let n = notify
            .recv(&mut buffer)
            .expect("a notification arrives within 30 s");
        let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
        messages.push(message.clone());
        if message.lines().any(|l| l == "READY=1") {
            break;
        }
    }
    // The very moment READY=1 is read, every listener must already accept.
    let (status, _) =
        http(http_address, "GET", "/healthz", None, None).expect("HTTP is bound at READY");
    assert_eq!(status, 200);
    std::net::TcpStream::connect(turn_address).expect("TURN TCP is bound at READY");
    let (status, body) = http(http_address, "GET", "/readyz", None, None).unwrap();
    assert_eq!(status, 200, "{body}");
    let ready_after = started.elapsed();

    // The watchdog pings at half of WATCHDOG_USEC.
    let mut watchdog = false;
    for _ in 0..10 {
        let n = notify.recv(&mut buffer).expect("watchdog pings arrive");
        if String::from_utf8_lossy(&buffer[..n])
            .lines()
            .any(|l| l == "WATCHDOG=1")
        {
            watchdog = true;
            break;
        }
    }
    assert!(watchdog, "no WATCHDOG=1 ping");

    let status = daemon.stop_with(Signal::SIGTERM, Duration::from_secs(10));
    assert!(status.success());
    let mut stopping = false;
    while let Ok(n) = notify.recv(&mut buffer) {
        if String::from_utf8_lossy(&buffer[..n])
            .lines()
            .any(|l| l == "STOPPING=1")
        {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 at shutdown; got {messages:?}");
    assert!(ready_after < Duration::from_secs(30));
}

#[test]
fn user_commands_run_by_root_leave_the_database_owned_by_the_daemons_user() {
    use std::os::unix::fs::MetadataExt;
    // `nobody` stands in for the packaged `parley` system user.
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a nobody user");
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test checks what root's `parley user` does; the suite runs as root"
    );
    let daemon = Daemon::configure("");
    let data = daemon.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    // The temp dir is root's 0700: let the daemon's user through, as /var/lib is.
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::chown(&data, Some(nobody.uid), Some(nobody.gid)).unwrap();

    let added = parley(
        Some(&daemon.config_path),
        &["user", "add", "alice", "--password-stdin"],
        Some("password-1\n"),
    );
    assert!(added.status.success(), "{}", stderr(&added));
    for entry in std::fs::read_dir(&data).unwrap() {
        let entry = entry.unwrap();
        assert_eq!(
            entry.metadata().unwrap().uid(),
            nobody.uid.as_raw(),
            "{} is not owned by the data directory's owner",
            entry.path().display()
        );
    }
    let daemon = daemon.spawn(&[]);
    let (status, _) = daemon.request(
        "POST",
        "/api/v1/auth/login",
        Some(r#"{"username":"alice","password":"password-1"}"#),
        None,
    );
    assert_eq!(status, 200);
}

/// The harness's answer to `free_port`'s race (`tests/it/daemon.rs`): a port taken between the
/// pick and the daemon's bind moves a first start to new ports instead of failing the test, for
/// the HTTP listener and for the relay's.
#[test]
fn a_first_start_whose_port_was_taken_meanwhile_moves_to_new_ports() {
    for taken in ["http", "turn"] {
        let daemon = Daemon::configure("");
        let (old_http, old_turn) = (daemon.http, daemon.turn);
        let _squatter: Box<dyn std::any::Any> = match taken {
            "http" => Box::new(std::net::TcpListener::bind(old_http).expect("take the port")),
            _ => Box::new(std::net::UdpSocket::bind(old_turn).expect("take the port")),
        };
        let daemon = daemon.spawn(&[]);
        match taken {
            "http" => assert_ne!(daemon.http, old_http),
            _ => assert_ne!(daemon.turn, old_turn),
        }
        let (status, _) = daemon.request("GET", "/healthz", None, None);
        assert_eq!(status, 200, "{taken}");
        let config = std::fs::read_to_string(&daemon.config_path).unwrap();
        assert!(
            config.contains(&format!("\"{}\"", daemon.http))
                && config.contains(&format!("\"{}\"", daemon.turn)),
            "{config}"
        );
    }
}
