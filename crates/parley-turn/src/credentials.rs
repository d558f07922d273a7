//! Time-limited shared-secret TURN credentials ("TURN REST API" kind), compatible with coturn's
//! `use-auth-secret`: username `<unix-expiry>:<userId>`, password
//! `base64(HMAC-SHA1(secret, username))`.
//!
//! Everything here is pure: the clock is a parameter, so expiry is tested without sleeping.

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use hmac::{Hmac, KeyInit, Mac};

type HmacSha1 = Hmac<sha1::Sha1>;

/// Mints credentials for `user_id` valid for `ttl_secs` from `now_unix`.
/// Returns `(username, password)`.
pub fn mint(secret: &str, user_id: i64, ttl_secs: u64, now_unix: u64) -> (String, String) {
    let username = format!("{}:{}", now_unix.saturating_add(ttl_secs), user_id);
    let password = password_for(secret, &username);
    (username, password)
}

/// The password a shared secret gives to a username.
pub fn password_for(secret: &str, username: &str) -> String {
    let mut mac =
        HmacSha1::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    BASE64_STANDARD.encode(mac.finalize().into_bytes())
}

/// The long-term credential key (RFC 5389 15.4): `MD5(username:realm:password)`.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> Vec<u8> {
    turn::auth::generate_auth_key(username, realm, password)
}

/// Why a username was refused before any integrity check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsernameError {
    /// Neither `<expiry>:<user>` nor a bare `<expiry>`.
    Malformed,
    /// The expiry lies in the past.
    Expired,
}

/// A parsed time-limited username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedUsername<'a> {
    pub expiry_unix: u64,
    /// The part after the first `:`; empty for the bare form that `turnutils_uclient -W` sends.
    pub user: &'a str,
}

/// Parses `<expiry>:<user>` or a bare `<expiry>` and checks the expiry against `now_unix`.
pub fn parse_username(username: &str, now_unix: u64) -> Result<TimedUsername<'_>, UsernameError> {
    let (expiry, user) = match username.split_once(':') {
        Some((expiry, user)) => (expiry, user),
        None => (username, ""),
    };
    // u64::from_str accepts a leading '+'; coturn does not, and neither do we.
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UsernameError::Malformed);
    }
    let expiry_unix: u64 = expiry.parse().map_err(|_| UsernameError::Malformed)?;
    if expiry_unix < now_unix {
        return Err(UsernameError::Expired);
    }
    Ok(TimedUsername { expiry_unix, user })
}

/// The current secret and the previous ones still accepted during a rotation.
#[derive(Clone)]
pub struct Secrets {
    /// Current secret first.
    secrets: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs.
        write!(f, "Secrets({} configured)", self.secrets.len())
    }
}

impl Secrets {
    /// `current` signs new credentials; `previous` are only accepted.
    pub fn new(current: String, previous: Vec<String>) -> Self {
        let mut secrets = vec![current];
        secrets.extend(previous.into_iter().filter(|s| !s.is_empty()));
        Secrets { secrets }
    }

    pub fn current(&self) -> &str {
        &self.secrets[0]
    }

    /// Long-term keys for `username` under every accepted secret, current first, or why the
    /// username itself is refused.
    pub fn candidate_keys(
        &self,
        username: &str,
        realm: &str,
        now_unix: u64,
    ) -> Result<Vec<Vec<u8>>, UsernameError> {
        parse_username(username, now_unix)?;
        Ok(self
            .secrets
            .iter()
            .map(|secret| long_term_key(username, realm, &password_for(secret, username)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn minted_username_has_expiry_then_user() {
        let (username, _) = mint("s3cret", 42, 21600, NOW);
        assert_eq!(username, format!("{}:42", NOW + 21600));
    }

    #[test]
    fn password_matches_coturn_rest_api_reference() {
        // Reference value computed independently with:
        //   printf '%s' 1800021600:42 | openssl dgst -binary -sha1 -hmac s3cret | base64
        assert_eq!(
            password_for("s3cret", "1800021600:42"),
            "fxHsIB9BPq++ttUKUcL7M/jX6Ms="
        );
    }

    #[test]
    fn both_username_forms_parse() {
        let full = parse_username("1800000100:7", NOW).unwrap();
        assert_eq!((full.expiry_unix, full.user), (1_800_000_100, "7"));
        let bare = parse_username("1800000100", NOW).unwrap();
        assert_eq!((bare.expiry_unix, bare.user), (1_800_000_100, ""));
    }

    #[test]
    fn expired_username_is_refused() {
        assert_eq!(
            parse_username("1799999999:7", NOW),
            Err(UsernameError::Expired)
        );
        assert_eq!(
            parse_username("1799999999", NOW),
            Err(UsernameError::Expired)
        );
    }

    #[test]
    fn username_expiring_now_is_still_accepted() {
        assert!(parse_username("1800000000:7", NOW).is_ok());
    }

    #[test]
    fn malformed_usernames_are_refused() {
        for bad in [
            "",
            ":7",
            "alice",
            "+1800000100:7",
            "18000001x0:7",
            "-1:7",
            "99999999999999999999999",
        ] {
            assert_eq!(
                parse_username(bad, NOW),
                Err(UsernameError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn previous_secret_yields_second_candidate_key() {
        let secrets = Secrets::new("new".into(), vec!["old".into(), String::new()]);
        let (username, old_password) = mint("old", 3, 60, NOW);
        let keys = secrets.candidate_keys(&username, "parley", NOW).unwrap();
        assert_eq!(keys.len(), 2, "empty previous secrets are ignored");
        assert_eq!(keys[1], long_term_key(&username, "parley", &old_password));
        assert_ne!(keys[0], keys[1]);
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let secrets = Secrets::new("hunter2".into(), vec![]);
        assert!(!format!("{secrets:?}").contains("hunter2"));
    }
}
