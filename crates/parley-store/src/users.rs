//! Accounts: create, look up, verify passwords, disable, remove.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use serde::Serialize;

use crate::{Result, Store, StoreError, unix_millis_now};

/// A person who can log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    #[serde(skip)]
    pub disabled: bool,
    #[serde(skip)]
    pub created_at: i64,
}

type UserRow = (i64, String, String, bool, i64);

fn user_from(row: UserRow) -> User {
    User {
        id: row.0,
        username: row.1,
        display_name: row.2,
        disabled: row.3,
        created_at: row.4,
    }
}

/// The columns of [`UserRow`], as a macro so queries stay `&'static str` (sqlx 0.9 refuses
/// formatted SQL unless it is asserted safe, and nothing here needs formatting).
macro_rules! user_columns {
    () => {
        "id, username, display_name, disabled, created_at"
    };
}

/// Usernames are what people type and see in URLs and logs: keep them plain.
pub fn validate_username(username: &str) -> Result<()> {
    let ok_len = (1..=32).contains(&username.chars().count());
    let ok_chars = username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "username",
            reason: "1 to 32 characters: letters, digits, '.', '_' or '-'".into(),
        })
    }
}

pub fn validate_password(password: &str) -> Result<()> {
    if (8..=256).contains(&password.chars().count()) {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "password",
            reason: "8 to 256 characters".into(),
        })
    }
}

pub fn validate_display_name(display_name: &str) -> Result<()> {
    let count = display_name.trim().chars().count();
    if (1..=64).contains(&count) && !display_name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "displayName",
            reason: "1 to 64 printable characters".into(),
        })
    }
}

/// argon2id is deliberately slow (tens of milliseconds): run it off the async threads.
async fn hash_password(password: &str) -> Result<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| StoreError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| StoreError::Hash(e.to_string()))?
}

async fn password_matches(password: &str, hash: &str) -> bool {
    if hash.is_empty() {
        return false;
    }
    let (password, hash) = (password.to_owned(), hash.to_owned());
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

impl Store {
    /// Creates an account. The username is unique without regard to case.
    pub async fn create_user(
        &self,
        username: &str,
        display_name: Option<&str>,
        password: &str,
    ) -> Result<User> {
        validate_username(username)?;
        validate_password(password)?;
        let display_name = display_name.map(str::trim).unwrap_or(username);
        validate_display_name(display_name)?;
        let hash = hash_password(password).await?;
        let now = unix_millis_now();
        let result = sqlx::query_as::<_, UserRow>(concat!(
            "INSERT INTO users (username, display_name, password_hash, created_at)
             VALUES (?, ?, ?, ?) RETURNING ",
            user_columns!(),
            ""
        ))
        .bind(username)
        .bind(display_name)
        .bind(hash)
        .bind(now)
        .fetch_one(self.pool())
        .await;
        match result {
            Ok(row) => Ok(user_from(row)),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::UsernameTaken(username.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The user with this username and password, if both match and the account is enabled.
    /// A wrong username and a wrong password are indistinguishable to the caller.
    pub async fn verify_login(&self, username: &str, password: &str) -> Result<Option<User>> {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, password_hash FROM users WHERE username = ? AND disabled = 0 AND removed = 0",
        )
        .bind(username)
        .fetch_optional(self.pool())
        .await?;
        let Some((id, hash)) = row else {
            // Spend the same time as a real check, so response timing does not reveal which
            // usernames exist.
            let _ = password_matches(password, dummy_hash().await).await;
            return Ok(None);
        };
        if password_matches(password, &hash).await {
            self.user_by_id(id).await
        } else {
            Ok(None)
        }
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let row = sqlx::query_as::<_, UserRow>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = ? AND removed = 0"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(user_from))
    }

    /// Looks a user up by username (any case).
    pub async fn user_by_username(&self, username: &str) -> Result<Option<User>> {
        let row = sqlx::query_as::<_, UserRow>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE username = ? AND removed = 0"
        ))
        .bind(username)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(user_from))
    }

    /// Every account that exists, disabled ones included, by username.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query_as::<_, UserRow>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE removed = 0 ORDER BY username"
        ))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(user_from).collect())
    }

    /// Sets a new password and ends every session of the user.
    pub async fn set_password(&self, username: &str, password: &str) -> Result<User> {
        validate_password(password)?;
        let user = self.existing(username).await?;
        let hash = hash_password(password).await?;
        sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
            .bind(hash)
            .bind(user.id)
            .execute(self.pool())
            .await?;
        self.revoke_user_sessions(user.id).await?;
        Ok(user)
    }

    /// Disables (or re-enables) an account; disabling ends its sessions.
    pub async fn set_disabled(&self, username: &str, disabled: bool) -> Result<User> {
        let user = self.existing(username).await?;
        sqlx::query("UPDATE users SET disabled = ? WHERE id = ?")
            .bind(disabled)
            .bind(user.id)
            .execute(self.pool())
            .await?;
        if disabled {
            self.revoke_user_sessions(user.id).await?;
        }
        Ok(User { disabled, ..user })
    }

    /// Removes an account: it can no longer log in, its username is free again, and its
    /// sessions end. Its calls stay in the other parties' history, shown as "Removed user".
    pub async fn remove_user(&self, username: &str) -> Result<User> {
        let user = self.existing(username).await?;
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE users SET username = '~removed-' || id, display_name = 'Removed user',
             password_hash = '', disabled = 1, removed = 1 WHERE id = ?",
        )
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(user.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn existing(&self, username: &str) -> Result<User> {
        self.user_by_username(username)
            .await?
            .ok_or_else(|| StoreError::NoSuchUser(username.to_owned()))
    }
}

/// An argon2id hash of a throwaway password, checked against when the username does not exist,
/// made once so that it has exactly the parameters of real hashes.
async fn dummy_hash() -> &'static str {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_init(|| async {
            hash_password("not-a-real-password")
                .await
                .unwrap_or_default()
        })
        .await
}
