//! Login sessions: opaque bearer tokens, stored hashed, with expiry and revocation.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{Result, Store, User, unix_millis_now};

/// How [`Store::callee_for_session`] is told which user: by id or by username (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKey<'a> {
    Id(i64),
    Name(&'a str),
}

/// The login session no longer authenticates anyone: revoked, expired, deleted, or of a
/// disabled or removed user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionUnusable;

/// A live session, as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: i64,
    pub user_id: i64,
    pub expires_at: i64,
}

/// A session just created: the token is shown to the client once and never stored.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub session: Session,
    pub token: String,
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

impl Store {
    /// Starts a session for `user_id` lasting `ttl_secs`.
    pub async fn create_session(&self, user_id: i64, ttl_secs: u64) -> Result<NewSession> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let now = unix_millis_now();
        let expires_at = now.saturating_add((ttl_secs as i64).saturating_mul(1000));
        // Not `INSERT ... RETURNING` with `fetch_one`: SQLite yields the returned row before the
        // statement commits, and a commit that then fails (disk full) went unreported, handing
        // out a token whose session was never stored (issue 10). `execute` runs to completion.
        let id = sqlx::query(
            "INSERT INTO sessions (user_id, token_hash, created_at, expires_at)
             VALUES (?, ?, ?, ?)",
        )
        .bind(user_id)
        .bind(token_hash(&token))
        .bind(now)
        .bind(expires_at)
        .execute(&mut *self.conn().await?)
        .await?
        .last_insert_rowid();
        Ok(NewSession {
            session: Session {
                id,
                user_id,
                expires_at,
            },
            token,
        })
    }

    /// The session and user behind a bearer token, if the token is known, unexpired, not
    /// revoked, and its user is enabled.
    pub async fn session_user(&self, token: &str) -> Result<Option<(Session, User)>> {
        if token.is_empty() || token.len() > 256 {
            return Ok(None);
        }
        let row: Option<(i64, i64, i64, String, String)> = sqlx::query_as(
            "SELECT s.id, s.expires_at, u.id, u.username, u.display_name
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = ? AND s.revoked_at IS NULL AND s.expires_at > ?
               AND u.disabled = 0 AND u.removed = 0",
        )
        .bind(token_hash(token))
        .bind(unix_millis_now())
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(
            row.map(|(id, expires_at, user_id, username, display_name)| {
                (
                    Session {
                        id,
                        user_id,
                        expires_at,
                    },
                    User {
                        id: user_id,
                        username,
                        display_name,
                        disabled: false,
                        created_at: 0,
                    },
                )
            }),
        )
    }

    /// Ends one session at once.
    pub async fn revoke_session(&self, session_id: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(unix_millis_now())
            .bind(session_id)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    /// Ends every session of a user (password change, disable).
    pub async fn revoke_user_sessions(&self, user_id: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL")
            .bind(unix_millis_now())
            .bind(user_id)
            .execute(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    /// Those of `session_ids` that no longer authenticate anyone: revoked, expired, deleted, or
    /// of a disabled or removed user. The daemon checks the sessions of connected sockets with
    /// this, because `parley user ...` changes them from another process.
    pub async fn unusable_sessions(&self, session_ids: &[i64]) -> Result<Vec<i64>> {
        let now = unix_millis_now();
        let mut unusable = Vec::new();
        // Chunks keep each statement far below SQLite's bound-parameter limit.
        for chunk in session_ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT s.id FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.id IN ({marks}) AND s.revoked_at IS NULL AND s.expires_at > ?
                   AND u.disabled = 0 AND u.removed = 0"
            );
            // Only `?` placeholders are spliced in; every value is bound.
            let mut query = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            let usable: std::collections::HashSet<i64> = query
                .bind(now)
                .fetch_all(&mut *self.conn().await?)
                .await?
                .into_iter()
                .map(|(id,)| id)
                .collect();
            unusable.extend(chunk.iter().copied().filter(|id| !usable.contains(id)));
        }
        Ok(unusable)
    }

    /// The user `callee` names (`None`: no such user, or removed), asked together with whether
    /// the login session `session_id` still authenticates anyone (as [`Store::unusable_sessions`]
    /// decides it): `Err(SessionUnusable)` when it does not, whatever the callee. One query where
    /// `call:initiate` made two, each a round trip to a database thread (issue 14).
    pub async fn callee_for_session(
        &self,
        session_id: i64,
        callee: UserKey<'_>,
    ) -> Result<std::result::Result<Option<User>, SessionUnusable>> {
        // `FROM (SELECT 1) LEFT JOIN`: one row whether or not the callee exists, so the session
        // verdict always comes back. `c.username = ?` compares with the column's NOCASE
        // collation, as `user_by_username` does.
        const BY_ID: &str =
            "SELECT EXISTS (SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id
                    WHERE s.id = ? AND s.revoked_at IS NULL AND s.expires_at > ?
                      AND u.disabled = 0 AND u.removed = 0),
                c.id, c.username, c.display_name, c.disabled, c.created_at
             FROM (SELECT 1) LEFT JOIN users c ON c.id = ? AND c.removed = 0";
        const BY_NAME: &str =
            "SELECT EXISTS (SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id
                    WHERE s.id = ? AND s.revoked_at IS NULL AND s.expires_at > ?
                      AND u.disabled = 0 AND u.removed = 0),
                c.id, c.username, c.display_name, c.disabled, c.created_at
             FROM (SELECT 1) LEFT JOIN users c ON c.username = ? AND c.removed = 0";
        type Row = (
            bool,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<bool>,
            Option<i64>,
        );
        let query = match callee {
            UserKey::Id(_) => sqlx::query_as::<_, Row>(BY_ID),
            UserKey::Name(_) => sqlx::query_as::<_, Row>(BY_NAME),
        }
        .bind(session_id)
        .bind(unix_millis_now());
        let query = match callee {
            UserKey::Id(id) => query.bind(id),
            UserKey::Name(name) => query.bind(name),
        };
        let (usable, id, username, display_name, disabled, created_at) =
            query.fetch_one(&mut *self.conn().await?).await?;
        if !usable {
            return Ok(Err(SessionUnusable));
        }
        Ok(Ok(
            match (id, username, display_name, disabled, created_at) {
                (
                    Some(id),
                    Some(username),
                    Some(display_name),
                    Some(disabled),
                    Some(created_at),
                ) => Some(User {
                    id,
                    username,
                    display_name,
                    disabled,
                    created_at,
                }),
                _ => None,
            },
        ))
    }

    /// Deletes sessions that expired or were revoked more than a day ago.
    pub async fn purge_old_sessions(&self) -> Result<u64> {
        let cutoff = unix_millis_now() - 24 * 3600 * 1000;
        let done = sqlx::query(
            "DELETE FROM sessions WHERE expires_at < ? OR (revoked_at IS NOT NULL AND revoked_at < ?)",
        )
        .bind(cutoff)
        .bind(cutoff)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(done.rows_affected())
    }
}
