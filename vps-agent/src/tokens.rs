//! Join tokens on the VPS side: only the SHA-256 of each secret is stored,
//! one file per token named by that hash, so `ceres-vps token create` (a
//! separate process) and the running agent need no lock: creating is an
//! exclusive link, redeeming an atomic rename that only one caller can win.

use std::time::{Duration, SystemTime};

use ceres_pki::{Fingerprint, JoinToken, Role, Secret, unix_secs};
use ceres_state::StateDir;
use serde::{Deserialize, Serialize};

/// How long a redeemed token's record is kept, so a second use gets
/// "already used" rather than "unknown".
const USED_RETENTION: Duration = Duration::from_secs(7 * 86400);

/// What is stored per token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    role: Role,
    created_unix: i64,
    expires_unix: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    used_unix: Option<i64>,
}

/// Why a token was not accepted. Messages go back to the joining host.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// Never issued here (or forged).
    #[error(
        "this join token is not known to the VPS (never issued here, or deleted): create one with `ceres-vps token create`"
    )]
    Unknown,
    /// Redeemed before.
    #[error("this join token was already used (at {}); tokens work once: create a new one with `ceres-vps token create`", ceres_pki::rfc3339(*.0))]
    AlreadyUsed(i64),
    /// Past its expiry.
    #[error("this join token expired at {}: create a new one with `ceres-vps token create` (add --ttl for more time)", ceres_pki::rfc3339(*.0))]
    Expired(i64),
    /// Storage failure.
    #[error("token store: {0}")]
    Store(#[from] ceres_state::StateError),
}

/// An unused token as `ceres-vps token list` shows it: never the secret.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// A prefix of the stored hash of the secret: names the token for
    /// `token revoke` and reveals nothing that would let anyone join.
    pub id: String,
    /// Who may join with it.
    pub role: Role,
    /// When it was created (Unix seconds).
    pub created_unix: i64,
    /// When it stops working (Unix seconds).
    pub expires_unix: i64,
}

/// Hex digits of the hash shown as a token's id: 48 bits tell a handful of
/// live tokens apart, and the id stays short enough to type.
const ID_LEN: usize = 12;

/// Why `token revoke` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No unused token has this id.
    #[error(
        "no unused token has the id {0:?} (see `ceres-vps token list`; used and expired tokens no longer work anyway)"
    )]
    NotFound(String),
    /// The id is a prefix of several.
    #[error("{0:?} matches {1} tokens: give more of the id")]
    Ambiguous(String, usize),
    /// Storage failure.
    #[error("token store: {0}")]
    Store(#[from] ceres_state::StateError),
}

/// The token store in `<state>/tokens`.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: StateDir,
    used: StateDir,
}

fn file_name(hash: &Fingerprint) -> String {
    format!("{}.json", hash.hex())
}

impl TokenStore {
    /// Opens the store.
    pub fn open(dir: StateDir) -> Result<Self, ceres_state::StateError> {
        let used = dir.subdir("used")?;
        Ok(Self { dir, used })
    }

    /// Creates and records a new token; returns it for printing (once).
    pub fn create(
        &self,
        role: Role,
        ttl: Duration,
        ca: Fingerprint,
        control_address: String,
    ) -> Result<JoinToken, ceres_state::StateError> {
        self.collect_garbage();
        let token = JoinToken::new(role, ca, control_address, ttl);
        let now = unix_secs(SystemTime::now());
        let record = Record {
            role,
            created_unix: now,
            expires_unix: token.expires_at_unix as i64,
            used_unix: None,
        };
        let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
        // A collision of 256-bit random secrets does not happen; create_new makes it harmless anyway.
        self.dir
            .create_new(&file_name(&token.secret.hash()), &json)?;
        Ok(token)
    }

    /// The unused tokens that have not expired, oldest first.
    pub fn list(&self) -> Result<Vec<TokenInfo>, ceres_state::StateError> {
        let now = unix_secs(SystemTime::now());
        let mut tokens = Vec::new();
        for name in self.dir.list()? {
            let Some(hash) = name.strip_suffix(".json") else {
                continue;
            };
            let Some(Ok(record)) = self
                .dir
                .read_optional(&name)?
                .map(|b| serde_json::from_slice::<Record>(&b))
            else {
                continue;
            };
            if record.expires_unix <= now {
                continue;
            }
            tokens.push(TokenInfo {
                id: hash.chars().take(ID_LEN).collect(),
                role: record.role,
                created_unix: record.created_unix,
                expires_unix: record.expires_unix,
            });
        }
        tokens.sort_by_key(|t| (t.created_unix, t.id.clone()));
        Ok(tokens)
    }

    /// Deletes the unused token whose id (or a unique prefix of it) is `id`:
    /// joining with it is then refused as unknown.
    pub fn revoke(&self, id: &str) -> Result<TokenInfo, RevokeError> {
        let id = id.trim().to_ascii_lowercase();
        if id.is_empty() {
            return Err(RevokeError::NotFound(id));
        }
        let matching: Vec<TokenInfo> = self
            .list()?
            .into_iter()
            .filter(|t| t.id.starts_with(&id))
            .collect();
        let [token] = matching.as_slice() else {
            return Err(if matching.is_empty() {
                RevokeError::NotFound(id)
            } else {
                RevokeError::Ambiguous(id, matching.len())
            });
        };
        let name = self
            .dir
            .list()?
            .into_iter()
            .find(|n| n.starts_with(&token.id) && n.ends_with(".json"))
            .ok_or_else(|| RevokeError::NotFound(id.clone()))?;
        self.dir.remove(&name)?;
        Ok(token.clone())
    }

    /// Redeems `secret`: returns the token's role, and the token is gone.
    pub fn redeem(&self, secret: &Secret) -> Result<Role, RedeemError> {
        let name = file_name(&secret.hash());
        let Some(bytes) = self.dir.read_optional(&name)? else {
            return Err(self.why_missing(&name));
        };
        let record: Record = serde_json::from_slice(&bytes).map_err(|_| RedeemError::Unknown)?;
        let now = unix_secs(SystemTime::now());
        if record.expires_unix <= now {
            let _ = self.dir.remove(&name);
            return Err(RedeemError::Expired(record.expires_unix));
        }
        // The rename is the claim: of two concurrent redeemers exactly one wins.
        let used_name = format!("used/{name}");
        if self.dir.rename(&name, &used_name).is_err() {
            return Err(self.why_missing(&name));
        }
        let used = Record {
            used_unix: Some(now),
            ..record.clone()
        };
        let _ = self
            .used
            .write(&name, &serde_json::to_vec_pretty(&used).unwrap_or_default());
        Ok(record.role)
    }

    fn why_missing(&self, name: &str) -> RedeemError {
        match self.used.read_optional(name).ok().flatten() {
            Some(bytes) => {
                let at = serde_json::from_slice::<Record>(&bytes)
                    .ok()
                    .and_then(|r| r.used_unix)
                    .unwrap_or(0);
                RedeemError::AlreadyUsed(at)
            }
            None => RedeemError::Unknown,
        }
    }

    /// Drops expired tokens and old used-records.
    pub fn collect_garbage(&self) {
        let now = unix_secs(SystemTime::now());
        for (dir, keep_after_expiry) in [
            (&self.dir, 0),
            (&self.used, USED_RETENTION.as_secs() as i64),
        ] {
            for name in dir.list().unwrap_or_default() {
                let Some(Ok(record)) = dir
                    .read_optional(&name)
                    .ok()
                    .flatten()
                    .map(|b| serde_json::from_slice::<Record>(&b))
                else {
                    continue;
                };
                if record.expires_unix + keep_after_expiry <= now {
                    let _ = dir.remove(&name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, TokenStore) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("tokens")).unwrap();
        (tmp, TokenStore::open(dir).unwrap())
    }

    #[test]
    fn redeem_once_then_already_used() {
        let (_t, s) = store();
        let tok = s
            .create(
                Role::Home,
                Duration::from_secs(60),
                Fingerprint::of(b"x"),
                "a:1".into(),
            )
            .unwrap();
        assert_eq!(s.redeem(&tok.secret).unwrap(), Role::Home);
        assert!(matches!(
            s.redeem(&tok.secret),
            Err(RedeemError::AlreadyUsed(_))
        ));
    }

    #[test]
    fn unknown_and_expired() {
        let (_t, s) = store();
        assert!(matches!(
            s.redeem(&Secret::random()),
            Err(RedeemError::Unknown)
        ));
        let tok = s
            .create(
                Role::Admin,
                Duration::ZERO,
                Fingerprint::of(b"x"),
                "a:1".into(),
            )
            .unwrap();
        assert!(matches!(
            s.redeem(&tok.secret),
            Err(RedeemError::Expired(_))
        ));
    }

    #[test]
    fn store_holds_no_secret() {
        let (tmp, s) = store();
        let tok = s
            .create(
                Role::Home,
                Duration::from_secs(60),
                Fingerprint::of(b"x"),
                "a:1".into(),
            )
            .unwrap();
        let secret_hex = hex_of(tok.secret.expose());
        for entry in std::fs::read_dir(tmp.path().join("tokens"))
            .unwrap()
            .flatten()
        {
            let name = entry.file_name().into_string().unwrap();
            assert!(!name.contains(&secret_hex));
            if entry.path().is_file() {
                let body = std::fs::read_to_string(entry.path()).unwrap();
                assert!(!body.contains(&secret_hex));
            }
        }
    }

    #[test]
    fn list_shows_unused_tokens_and_revoke_makes_one_unknown() {
        let (_t, s) = store();
        let ca = Fingerprint::of(b"x");
        let home = s
            .create(Role::Home, Duration::from_secs(60), ca, "a:1".into())
            .unwrap();
        let admin = s
            .create(Role::Admin, Duration::from_secs(60), ca, "a:1".into())
            .unwrap();
        let used = s
            .create(Role::Home, Duration::from_secs(60), ca, "a:1".into())
            .unwrap();
        s.redeem(&used.secret).unwrap();
        s.create(Role::Home, Duration::ZERO, ca, "a:1".into())
            .unwrap();
        let list = s.list().unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        let home_id = &home.secret.hash().hex()[..ID_LEN];
        let listed = list.iter().find(|t| t.id == home_id).unwrap();
        assert_eq!(listed.role, Role::Home);
        assert!(listed.expires_unix > listed.created_unix);
        assert!(matches!(s.revoke("zz"), Err(RevokeError::NotFound(_))));
        assert_eq!(s.revoke(home_id).unwrap().role, Role::Home);
        assert!(matches!(s.redeem(&home.secret), Err(RedeemError::Unknown)));
        assert_eq!(s.redeem(&admin.secret).unwrap(), Role::Admin);
    }

    fn hex_of(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
