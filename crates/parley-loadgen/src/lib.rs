//! The Parley load generator: drives a running daemon over real Socket.IO v4 WebSocket
//! connections and reports what it measured, checking that every event it expects arrives
//! (a lost or misrouted event is an error, never a slow sample).
//!
//! - [`users`]: accounts and tokens, over HTTP or seeded straight into the database.
//! - [`sio`]: the Socket.IO client, one small task per connection.
//! - [`scenario`]: `idle`, `burst` and `calls`, each returning a report.
//! - [`stats`], [`procstat`]: percentiles, and the daemon's RSS and CPU from `/proc`.
//!
//! `cargo xtask bench` runs the binary against a fresh release daemon; `tests/it/loadgen.rs`
//! runs the scenarios for a few seconds in the test suite so that they cannot rot.

pub mod procstat;
pub mod scenario;
pub mod sio;
pub mod stats;
pub mod users;

/// What can go wrong while driving the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot connect to {address}: {source}; is the daemon running there?")]
    Connect {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("websocket handshake failed: {0}")]
    Handshake(String),
    #[error("Socket.IO protocol error: {0}")]
    Protocol(String),
    #[error("the server refused the socket: {0}")]
    Refused(String),
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("the connection closed")]
    Closed,
    #[error("unexpected: {0}")]
    Unexpected(String),
    #[error("HTTP request failed: {0}")]
    Http(String),
    #[error("database: {0}")]
    Database(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        Error::Database(e.to_string())
    }
}

impl From<parley_store::StoreError> for Error {
    fn from(e: parley_store::StoreError) -> Error {
        Error::Database(e.to_string())
    }
}

/// Raises this process's open-file soft limit to the hard limit: every socket is a descriptor,
/// and the usual soft limit (1024) would stop the idle benchmark early. Returns the new limit.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}
