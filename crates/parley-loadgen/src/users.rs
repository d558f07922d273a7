//! Accounts for simulated users: registered over the HTTP API (the real path, argon2 and all),
//! or seeded straight into the daemon's SQLite database when there are thousands of them
//! (argon2 costs tens of milliseconds per account by design: 10,000 registrations would take
//! minutes and measure password hashing, not signaling).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Error;

/// A simulated user and the bearer token it connects with.
#[derive(Debug, Clone)]
pub struct UserCred {
    pub id: i64,
    pub username: String,
    pub token: String,
}

/// The password of every generated account.
pub const PASSWORD: &str = "loadgen-password";

/// A username prefix unlikely to collide with an earlier run against the same database.
pub fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("lg{:x}", (nanos / 1000) % 0xff_ffff)
}

/// A one-request HTTP/1.1 exchange; returns the status and the JSON body.
pub async fn http_json(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Result<(u16, Value), Error> {
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|source| Error::Connect { address, source })?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| Error::Http(format!("{method} {path}: no answer within 60 s")))?
        .map_err(|e| Error::Http(format!("{method} {path}: {e}")))?;
    let text = String::from_utf8_lossy(&response);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Http(format!("{method} {path}: bad response {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, json))
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

/// `POST /api/v1/auth/register` (registration must be open).
pub async fn register(http: SocketAddr, username: &str) -> Result<UserCred, Error> {
    let body = json!({ "username": username, "password": PASSWORD });
    let (status, reply) =
        http_json(http, "POST", "/api/v1/auth/register", Some(&body), None).await?;
    if status != 201 {
        return Err(Error::Http(format!(
            "registering {username}: HTTP {status} {reply}; is registration open and \
             auth.login_attempts_per_minute high enough?"
        )));
    }
    let id = reply["user"]["id"].as_i64();
    let token = reply["token"].as_str();
    match (id, token) {
        (Some(id), Some(token)) => Ok(UserCred {
            id,
            username: username.to_owned(),
            token: token.to_owned(),
        }),
        _ => Err(Error::Http(format!(
            "register reply without user.id or token: {reply}"
        ))),
    }
}

/// Registers `count` users `<prefix>-<i>` over HTTP, a few at a time.
pub async fn register_many(
    http: SocketAddr,
    prefix: &str,
    count: usize,
) -> Result<Vec<UserCred>, Error> {
    let mut users = Vec::with_capacity(count);
    let mut start = 0;
    while start < count {
        let end = (start + 4).min(count);
        let batch: Vec<_> = (start..end)
            .map(|i| {
                let name = format!("{prefix}-{i}");
                tokio::spawn(async move { register(http, &name).await })
            })
            .collect();
        for task in batch {
            users.push(task.await.map_err(|e| Error::Http(e.to_string()))??);
        }
        start = end;
    }
    Ok(users)
}

/// Creates `count` users `<prefix>-<i>` directly in the database at `db` (the daemon's
/// `<data_dir>/parley.db`; the daemon may be running: SQLite in WAL mode takes the writes
/// while it serves), and a login session for each through the store's own code, so the
/// tokens are exactly what a login would have produced.
///
/// Users are inserted with raw SQL and one shared argon2 hash of [`PASSWORD`] (the store's
/// `create_user` would hash each password anew). This follows migration 0001's `users` table.
pub async fn seed(
    db: &Path,
    prefix: &str,
    count: usize,
    ttl_secs: u64,
) -> Result<Vec<UserCred>, Error> {
    let store = parley_store::Store::open(db).await?;
    let hash = tokio::task::spawn_blocking(|| {
        use argon2::PasswordHasher;
        argon2::Argon2::default()
            .hash_password(PASSWORD.as_bytes())
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| Error::Database(e.to_string()))?
    .map_err(|e| Error::Database(format!("argon2: {e}")))?;

    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::from_secs(10));
    let mut connection = sqlx::ConnectOptions::connect(&options).await?;
    let now = parley_store::unix_millis_now();
    let mut transaction = sqlx::Connection::begin(&mut connection).await?;
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let username = format!("{prefix}-{i}");
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO users (username, display_name, password_hash, created_at) \
             VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(&username)
        .bind(format!("Load {i}"))
        .bind(&hash)
        .bind(now)
        .fetch_one(&mut *transaction)
        .await?;
        ids.push((id, username));
    }
    transaction.commit().await?;
    drop(connection);

    let mut users = Vec::with_capacity(count);
    for (id, username) in ids {
        let session = store.create_session(id, ttl_secs).await?;
        users.push(UserCred {
            id,
            username,
            token: session.token,
        });
    }
    store.close().await;
    Ok(users)
}
