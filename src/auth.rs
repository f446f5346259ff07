//! Users and roles. A cluster started with an initial password (`--init-password-file`,
//! `CAIRN_INIT_PASSWORD`) has a user `admin`; from then on every PostgreSQL client logs in
//! with SCRAM-SHA-256 (pgwire's, fed the salted password kept in the catalog) and may do
//! what its roles allow:
//!
//! - `readonly`: read (SELECT, SHOW, transactions of reads);
//! - `readwrite`: that, and change rows (INSERT, UPDATE, DELETE, COPY FROM);
//! - `admin`: everything: schema changes and users.
//!
//! A cluster without users (dev mode, or started without an initial password) asks no one
//! for anything.

use crate::catalog::User;
use crate::error::{sqlstate, Error, Result};
use std::collections::BTreeSet;

pub const ROLES: [&str; 3] = ["admin", "readwrite", "readonly"];

/// PBKDF2 rounds of a stored password. PostgreSQL's default: a login costs the server one
/// derivation of this many rounds (a few ms), measured in docs/BENCHMARKS.md.
pub const SCRAM_ITERATIONS: u32 = 4096;

/// What a statement needs of the user running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    Read,
    Write,
    Admin,
}

/// The roles of the user a session logged in as (none logged in: no checks at all).
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub user: Option<String>,
    pub roles: BTreeSet<String>,
}

impl Grants {
    /// Nobody logged in: a cluster without users.
    pub fn everyone() -> Grants {
        Grants::default()
    }

    pub fn allows(&self, need: Need) -> bool {
        let Some(_) = &self.user else {
            return true;
        };
        let has = |r: &str| self.roles.contains(r);
        match need {
            Need::Read => has("admin") || has("readwrite") || has("readonly"),
            Need::Write => has("admin") || has("readwrite"),
            Need::Admin => has("admin"),
        }
    }

    /// Refuse with PostgreSQL's 42501 unless the user may do `what`.
    pub fn check(&self, need: Need, what: &str) -> Result<()> {
        if self.allows(need) {
            return Ok(());
        }
        let user = self.user.as_deref().unwrap_or("?");
        let roles = if self.roles.is_empty() {
            "no role".to_string()
        } else {
            self.roles.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        Err(Error::sql(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied: {what} needs the {} role; user {user} has {roles}",
                match need {
                    Need::Read => "readonly",
                    Need::Write => "readwrite",
                    Need::Admin => "admin",
                }
            ),
        ))
    }
}

/// Does `password` log `name` in? (HTTP Basic.) A success is remembered for a few minutes
/// against the stored salted password, so a dashboard polling every second does not pay a
/// key derivation per request; a changed password is a changed entry.
pub fn verify(catalog: &crate::catalog::Catalog, name: &str, password: &str) -> bool {
    use sha2::{Digest, Sha256};
    static RECENT: std::sync::OnceLock<moka::sync::Cache<(String, Vec<u8>), String>> =
        std::sync::OnceLock::new();
    let recent = RECENT.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(std::time::Duration::from_secs(300))
            .build()
    });
    let name = name.to_lowercase();
    let Some(user) = catalog.users.get(&name) else {
        return false;
    };
    let key = (name, Sha256::digest(password.as_bytes()).to_vec());
    if recent.get(&key).as_deref() == Some(user.salted_password.as_str()) {
        return true;
    }
    let Some(salt) = unhex(&user.salt) else {
        return false;
    };
    let derived = hex(&pgwire::api::auth::sasl::scram::gen_salted_password(
        password,
        &salt,
        user.iterations as usize,
    ));
    // Compared in time independent of where they differ.
    let same = derived.len() == user.salted_password.len()
        && derived
            .bytes()
            .zip(user.salted_password.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        recent.insert(key, user.salted_password.clone());
    }
    same
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A user record for `name` with `password` (a fresh salt), holding `roles`.
pub fn user(name: &str, password: &str, roles: BTreeSet<String>) -> Result<User> {
    valid_name(name)?;
    if password.is_empty() {
        return Err(Error::sql(
            sqlstate::INVALID_PARAMETER_VALUE,
            "a password cannot be empty",
        ));
    }
    let salt: [u8; 16] = rand::random();
    let salted = pgwire::api::auth::sasl::scram::gen_salted_password(
        password,
        &salt,
        SCRAM_ITERATIONS as usize,
    );
    Ok(User {
        name: name.to_lowercase(),
        roles,
        salt: hex(&salt),
        salted_password: hex(&salted),
        iterations: SCRAM_ITERATIONS,
    })
}

pub fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::sql(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("a user name is up to 63 letters, digits, '_', '-' and '.' (got {name:?})"),
        ))
    }
}

pub fn valid_role(role: &str) -> Result<String> {
    let role = role.to_lowercase();
    if ROLES.contains(&role.as_str()) {
        Ok(role)
    } else {
        Err(Error::sql(
            sqlstate::UNDEFINED_OBJECT,
            format!("role \"{role}\" does not exist (the roles are admin, readwrite, readonly)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_they_say() {
        let with = |roles: &[&str]| Grants {
            user: Some("u".into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        };
        assert!(Grants::everyone().allows(Need::Admin));
        assert!(with(&["readonly"]).allows(Need::Read));
        assert!(!with(&["readonly"]).allows(Need::Write));
        assert!(with(&["readwrite"]).allows(Need::Write));
        assert!(!with(&["readwrite"]).allows(Need::Admin));
        assert!(with(&["admin"]).allows(Need::Admin));
        assert!(!with(&[]).allows(Need::Read));
        let e = with(&["readonly"])
            .check(Need::Write, "INSERT")
            .unwrap_err();
        assert_eq!(e.code(), "42501");
    }

    #[test]
    fn stored_passwords_are_salted_and_hex() {
        let a = user("ann", "pw", BTreeSet::new()).unwrap();
        let b = user("ann", "pw", BTreeSet::new()).unwrap();
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.salted_password, b.salted_password);
        assert_eq!(unhex(&a.salt).unwrap().len(), 16);
        assert_eq!(unhex(&a.salted_password).unwrap().len(), 32);
        assert!(user("a b", "pw", BTreeSet::new()).is_err());
        assert!(user("ann", "", BTreeSet::new()).is_err());
    }
}
