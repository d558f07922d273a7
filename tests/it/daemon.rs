//! Starting the real `parley` binary for a test: a temp directory with a config file and a data
//! directory, free loopback ports, and a tiny HTTP client. The daemon is killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `parley` binary next to this test binary (target/<profile>/deps/it-* → target/<profile>).
pub fn parley_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .join("parley");
    assert!(
        binary.exists(),
        "{} is missing: build it first with `cargo build -p parleyd` (cargo xtask ci does)",
        binary.display()
    );
    binary
}

/// The relay ports `relay_ports` hands out: below Linux's ephemeral range (32768 and up), where
/// `free_port` and every client socket take theirs.
const RELAY_PORTS: std::ops::Range<u16> = 20000..32768;

/// A private slice of `len` relay ports (`turn.relay_ports`, "LOW-HIGH") for one test's daemon,
/// disjoint from every other slice handed out in this test process: the tests of `it` run as
/// threads of one process, and slices picked from a port number's remainder could overlap.
pub fn relay_ports(len: u16) -> (u16, u16) {
    static NEXT: std::sync::atomic::AtomicU16 =
        std::sync::atomic::AtomicU16::new(RELAY_PORTS.start);
    let low = NEXT.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    assert!(
        u32::from(low) + u32::from(len) <= u32::from(RELAY_PORTS.end),
        "the tests asked for more relay ports than {RELAY_PORTS:?} holds"
    );
    (low, low + len - 1)
}

/// How long a start-up health probe waits for its reply (a debug daemon answers in milliseconds).
const HEALTH_PROBE_WAIT: Duration = Duration::from_secs(2);

/// How the daemon's log shows a listener that could not bind (`EADDRINUSE`'s text from std).
const ADDRESS_IN_USE: &str = "(os error 98)";

/// A loopback port nobody listens on right now (TCP and UDP).
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = tcp.local_addr().expect("bound").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `parley <args>` with the given config file, waiting for it to exit.
pub fn parley(config: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(parley_binary());
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args(args)
        .env_remove("PARLEY_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the parley binary starts");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("write to parley's stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("parley exits")
}

/// `parley doctor` with the given config: whether every check passed, and what it printed
/// (stdout, then stderr).
pub fn doctor(config: &Path) -> (bool, String) {
    let output = parley(Some(config), &["doctor"], None);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub http: SocketAddr,
    pub turn: SocketAddr,
    pub child: Option<Child>,
    /// Whether this daemon has been started before: only a first start may move to new ports.
    started: bool,
}

impl Daemon {
    /// Writes a config (the ports and data directory, then `extra` TOML appended to the
    /// sections it names) and starts the daemon, waiting until `/healthz` answers.
    pub fn start(extra: &str) -> Daemon {
        Daemon::start_with(extra, &[])
    }

    pub fn start_with(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let daemon = Daemon::configure(extra);
        daemon.spawn(env)
    }

    /// Writes the config without starting anything.
    pub fn configure(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let turn = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config_path = dir.path().join("parley.toml");
        let text = format!(
            "[http]\nlisten = \"{http}\"\n[storage]\ndata_dir = \"{}\"\n[turn]\nlisten = \"{turn}\"\ntls_listen = \"\"\n[log]\nlevel = \"debug\"\n{extra}",
            dir.path().join("data").display()
        );
        std::fs::write(&config_path, merge_sections(&text)).expect("write config");
        Daemon {
            dir,
            config_path,
            http,
            turn,
            child: None,
            started: false,
        }
    }

    /// Starts the configured daemon and waits for `/healthz`.
    ///
    /// `free_port` can only say that a port was free when it looked: another process (a client
    /// socket's ephemeral port, a parallel test) may bind it before the daemon does. When a
    /// first start fails on exactly that, the daemon gets new ports and starts again, up to
    /// three times; a restart keeps its ports (clients and other servers know them).
    pub fn spawn(self, env: &[(&str, &str)]) -> Daemon {
        let first = !self.started;
        let mut daemon = self.spawn_without_waiting(env);
        let mut attempts = 1;
        loop {
            match daemon.wait_healthy() {
                Ok(()) => return daemon,
                Err(exit) if first && attempts < 3 && exit.contains(ADDRESS_IN_USE) => {
                    eprintln!(
                        "parley could not bind a port picked for it ({} or {}), taken meanwhile: new ports",
                        daemon.http, daemon.turn
                    );
                    daemon.move_to_new_ports();
                    daemon = daemon.spawn_without_waiting(env);
                    attempts += 1;
                }
                Err(exit) => panic!("parley exited early {exit}"),
            }
        }
    }

    /// Picks new ports for HTTP and TURN and writes them into the config in place of the old.
    fn move_to_new_ports(&mut self) {
        let (http, turn) = (
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
        );
        let config = std::fs::read_to_string(&self.config_path).expect("read config");
        let config = config
            .replace(&format!("\"{}\"", self.http), &format!("\"{http}\""))
            .replace(&format!("\"{}\"", self.turn), &format!("\"{turn}\""));
        std::fs::write(&self.config_path, config).expect("write config");
        (self.http, self.turn) = (http, turn);
    }

    /// Starts the configured daemon and returns at once.
    pub fn spawn_without_waiting(mut self, env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(parley_binary());
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env_remove("PARLEY_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.path().join("daemon.log")).expect("log file"),
            ));
        for (key, value) in env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("the parley binary starts"));
        self.started = true;
        self
    }

    /// Panics with the log if the started daemon has exited: waiting for it is in vain.
    pub fn assert_running(&mut self) {
        if let Some(exit) = self.exited() {
            panic!("parley exited early {exit}");
        }
    }

    /// If the started daemon has exited: its exit status and its log.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        Some(format!("({status}):\n{}", self.log()))
    }

    /// Waits for `/healthz`; `Err` with [`Daemon::exited`]'s text if the daemon exited first.
    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(exit) = self.exited() {
                return Err(exit);
            }
            // A short wait for the reply: whatever else listens on a port the daemon could not
            // bind (see `spawn`) may take the connection and never answer.
            let probe = http_within(self.http, "GET", "/healthz", None, None, HEALTH_PROBE_WAIT);
            if let Ok((200, _)) = probe {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("parley did not become healthy within 30 s:\n{}", self.log());
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().expect("started").id() as i32)
    }

    /// Sends `signal` and waits (up to `within`) for the exit status.
    pub fn stop_with(
        &mut self,
        signal: nix::sys::signal::Signal,
        within: Duration,
    ) -> std::process::ExitStatus {
        nix::sys::signal::kill(self.pid(), signal).expect("signal the daemon");
        let child = self.child.as_mut().expect("started");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the daemon") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "parley did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `request` against this daemon; see [`http`].
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        http(self.http, method, path, body, token).expect("HTTP request to the daemon")
    }

    /// Registers `username` and returns its token.
    pub fn register(&self, username: &str) -> String {
        let body = format!(r#"{{"username":"{username}","password":"password-{username}"}}"#);
        let (status, reply) = self.request("POST", "/api/v1/auth/register", Some(&body), None);
        assert_eq!(status, 201, "{reply}");
        reply["token"].as_str().expect("token").to_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Merges repeated `[section]` headers, so that `extra` can add keys to sections the base
/// config already opened (TOML forbids defining a table twice).
fn merge_sections(text: &str) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut sections: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            current = trimmed.to_owned();
            if !sections.contains_key(&current) {
                order.push(current.clone());
                sections.insert(current.clone(), Vec::new());
            }
        } else if !trimmed.is_empty() {
            sections
                .entry(current.clone())
                .or_default()
                .push(line.to_owned());
            if !order.contains(&current) {
                order.insert(0, current.clone());
            }
        }
    }
    let mut out = String::new();
    for section in order {
        // A key set twice (base, then extra): the last one wins.
        let mut lines: Vec<String> = Vec::new();
        for line in &sections[&section] {
            let key = line.split('=').next().unwrap_or("").trim().to_owned();
            lines.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
            lines.push(line.clone());
        }
        if !section.is_empty() {
            out.push_str(&section);
            out.push('\n');
        }
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// A minimal HTTP/1.1 client (one request per connection): returns the status and the body
/// parsed as JSON (or as a JSON string when it is not JSON).
pub fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, serde_json::Value)> {
    http_within(address, method, path, body, token, Duration::from_secs(30))
}

/// [`http`] that gives up on a reply after `wait`.
fn http_within(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
    wait: Duration,
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(wait))?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {head}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    Ok((status, json))
}

/// The head of a one-shot HTTP/1.1 request (`connection: close`) with a bearer `token` and a
/// JSON `body` if given; the body goes after it.
pub fn request_head(method: &str, path: &str, body: &str, token: Option<&str>) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head
}

/// An HTTP/1.1 response read to its end: the status (0 when there is none) and the body,
/// de-chunked when it came chunked.
pub fn parse_response(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].trim_start_matches("\r\n");
    }
    out
}
