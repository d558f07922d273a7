//! Accounts: create, look up, verify passwords, disable, remove.

use std::num::NonZeroUsize;
use std::ptr::NonNull;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use rand::RngCore;
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
    if let Some(c) = display_name.chars().find(|c| is_hidden_or_control(*c)) {
        return Err(StoreError::Invalid {
            field: "displayName",
            reason: format!(
                "contains U+{:04X}, a control or invisible formatting character (such as a \
                 right-to-left override, which makes a name display as something else); use \
                 1 to 64 visible characters",
                c as u32
            ),
        });
    }
    let count = display_name.trim().chars().count();
    if (1..=64).contains(&count) {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "displayName",
            reason: "1 to 64 printable characters".into(),
        })
    }
}

/// Characters refused in display names: controls (Cc), line and paragraph separators, and the
/// format characters (Cf) of Unicode 16, which are invisible and can reorder or hide what a
/// name shows: bidi overrides, isolates and marks, zero-width spaces, soft hyphens, tags
/// (issue 10: a right-to-left override made one user's name read as another's). Zero-width
/// joiner and non-joiner stay allowed: Persian and Indic names and emoji sequences need them,
/// and they move nothing. Written out because std has no general-category lookup.
fn is_hidden_or_control(c: char) -> bool {
    const FORMAT: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200B),
        (0x200E, 0x200F),
        (0x2028, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let code = c as u32;
    c.is_control()
        || FORMAT
            .iter()
            .any(|&(first, last)| (first..=last).contains(&code))
}

/// argon2id's working memory (19 MiB with the default parameters), mapped for one hash and
/// unmapped as soon as it is done.
///
/// Through malloc the freed blocks stay in the process: glibc raises its mmap threshold to the
/// size of the first freed block, so later ones come from per-thread arenas that are never
/// trimmed, and every blocking thread that ever hashed kept its 19 MiB (a login flood left
/// 1.3 GiB resident, issue 10). A private anonymous mapping goes back to the kernel at `munmap`.
struct HashMemory {
    blocks: NonNull<Block>,
    len: usize,
}

impl HashMemory {
    fn map(len: usize) -> Result<HashMemory> {
        let bytes = len
            .checked_mul(Block::SIZE)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| StoreError::Hash(format!("bad argon2 memory size: {len} blocks")))?;
        // SAFETY: a new private anonymous mapping at an address the kernel picks aliases
        // nothing; it is unmapped only in `drop`.
        let pointer = unsafe {
            mmap_anonymous(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }
        .map_err(|e| StoreError::Hash(format!("cannot map {bytes} bytes for argon2: {e}")))?;
        Ok(HashMemory {
            blocks: pointer.cast(),
            len,
        })
    }
}

impl AsMut<[Block]> for HashMemory {
    fn as_mut(&mut self) -> &mut [Block] {
        // SAFETY: the mapping holds `len` blocks, is page-aligned (a block needs 64 bytes),
        // starts zero-filled (any bits are a valid block), and only `self` points into it.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_ptr(), self.len) }
    }
}

impl Drop for HashMemory {
    fn drop(&mut self) {
        // SAFETY: exactly the region `map` created; nothing borrows it once `self` is dropped.
        if let Err(e) = unsafe { munmap(self.blocks.cast(), self.len * Block::SIZE) } {
            log::error!("cannot unmap argon2 memory: {e}");
        }
    }
}

fn hash_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Hash(e.to_string())
}

/// A new argon2id hash (default parameters, random 16-byte salt) as a PHC string, exactly what
/// `Argon2::default().hash_password` makes, computed in [`HashMemory`]. Blocking: tens of ms.
pub fn hash_password_blocking(password: &str) -> Result<String> {
    let params = Params::default();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let memory = HashMemory::map(params.block_count())?;
    argon2
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut output, memory)
        .map_err(hash_error)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(hash_error)?,
        salt: Some(Salt::new(&salt).map_err(hash_error)?),
        hash: Some(Output::new(&output).map_err(hash_error)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `hash` (any argon2 variant and parameters),
/// computed in [`HashMemory`] and compared in constant time. Blocking: tens of ms.
pub fn password_matches_blocking(password: &str, hash: &str) -> bool {
    let Ok(phc) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(phc.algorithm.as_str()) else {
        return false;
    };
    let Ok(version) = phc
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let Ok(params) = Params::try_from(&phc) else {
        return false;
    };
    let Ok(memory) = HashMemory::map(params.block_count()) else {
        return false;
    };
    let mut output = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut output, memory)
        .is_ok()
        && Output::new(&output).is_ok_and(|computed| computed == *expected)
}

/// argon2id is deliberately slow (tens of milliseconds): run it off the async threads. How
/// many run at once is the caller's to bound (the daemon's login gate).
async fn hash_password(password: &str) -> Result<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || hash_password_blocking(&password))
        .await
        .map_err(hash_error)?
}

async fn password_matches(password: &str, hash: &str) -> bool {
    if hash.is_empty() {
        return false;
    }
    let (password, hash) = (password.to_owned(), hash.to_owned());
    tokio::task::spawn_blocking(move || password_matches_blocking(&password, &hash))
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
        // `execute`, not `INSERT ... RETURNING` with `fetch_one`: the latter hands back the row
        // before the statement commits, and a commit that then fails (disk full) went
        // unreported, logging a registration that was never stored (issue 10).
        let result = sqlx::query(
            "INSERT INTO users (username, display_name, password_hash, created_at)
             VALUES (?, ?, ?, ?)",
        )
        .bind(username)
        .bind(display_name)
        .bind(hash)
        .bind(now)
        .execute(&mut *self.conn().await?)
        .await;
        let id = match result {
            Ok(done) => done.last_insert_rowid(),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::UsernameTaken(username.to_owned()));
            }
            Err(e) => return Err(e.into()),
        };
        self.user_by_id(id)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// The user with this username and password, if both match and the account is enabled.
    /// A wrong username and a wrong password are indistinguishable to the caller.
    pub async fn verify_login(&self, username: &str, password: &str) -> Result<Option<User>> {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, password_hash FROM users WHERE username = ? AND disabled = 0 AND removed = 0",
        )
        .bind(username)
        .fetch_optional(&mut *self.conn().await?)
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
        .fetch_optional(&mut *self.conn().await?)
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
        .fetch_optional(&mut *self.conn().await?)
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
        .fetch_all(&mut *self.conn().await?)
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
            .execute(&mut *self.conn().await?)
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
            .execute(&mut *self.conn().await?)
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
        let mut connection = self.conn().await?;
        let mut tx = sqlx::Connection::begin(&mut *connection).await?;
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

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[test]
    fn hashes_made_in_mapped_memory_match_argon2s_own_both_ways() {
        let ours = hash_password_blocking("correct horse").expect("hash");
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        Argon2::default()
            .verify_password(b"correct horse", ours.as_str())
            .expect("argon2 accepts our hash");
        let theirs = Argon2::default()
            .hash_password(b"correct horse")
            .expect("hash")
            .to_string();
        assert!(password_matches_blocking("correct horse", &theirs));
        assert!(!password_matches_blocking("wrong horse", &theirs));
        assert!(!password_matches_blocking(
            "correct horse",
            "not a phc string"
        ));
        assert!(!password_matches_blocking("correct horse", ""));
    }

    #[test]
    fn display_names_refuse_bidi_controls_and_invisible_characters_issue_10() {
        for bad in [
            "\u{202E}evil",
            "a\u{2066}b\u{2069}",
            "a\u{200F}b",
            "zero\u{200B}width",
            "soft\u{AD}hyphen",
            "line\u{2028}break",
            "tab\tname",
            "\u{FEFF}bom",
            "tag\u{E0041}",
        ] {
            let error = validate_display_name(bad).expect_err(bad);
            assert!(
                matches!(&error, StoreError::Invalid { field: "displayName", reason } if reason.contains("U+")),
                "{bad:?}: {error}"
            );
        }
        for good in [
            "Zoë Ångström",
            "محمد علی",
            "王小明",
            "می\u{200C}خواهم",
            "👩\u{200D}💻 Ada",
        ] {
            validate_display_name(good).expect(good);
        }
        assert!(validate_display_name("   ").is_err());
        assert!(validate_display_name(&"x".repeat(65)).is_err());
    }
}
