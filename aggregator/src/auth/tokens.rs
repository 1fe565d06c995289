//! REST bearer tokens, configured by their salted SHA-256 hashes and never in
//! clear.
//!
//! A configured token has a name (its owner key and what logs show), a role and a
//! hash `sha256:<salt, 32 hex digits>:<SHA-256(salt ‖ token), 64 hex digits>`.
//! `infrawatch token new` makes a random 256-bit token and its hash;
//! `infrawatch token hash` hashes one read from standard input. A fast salted
//! hash is enough for tokens of that strength (a slow password hash such as
//! argon2 would cost every request milliseconds and add nothing against a
//! brute force of 2^256); the README asks for generated tokens.

use infrawatch_common::role::Role;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::scope::Scope;
use super::{Credential, Principal};

/// Bytes of salt.
const SALT_BYTES: usize = 16;
/// Bytes of a generated token.
const TOKEN_BYTES: usize = 32;

/// One accepted bearer token (`[[rest.tokens]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it: 1 to 64 letters, digits, '-', '_' or '.'.
    pub name: String,
    /// What it may do (`reader` or `admin`; `agent` gives nothing on REST).
    pub role: Role,
    /// `sha256:<salt hex>:<digest hex>`, from `infrawatch token new` or `hash`.
    pub hash: String,
    /// Only resources (and their events) of these clusters (`cluster` label);
    /// empty: every cluster. Readers only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    /// Only resources (and their events) of these namespaces (`namespace`
    /// label); empty: every namespace. Readers only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

impl TokenConfig {
    /// Its restriction, if it has one.
    pub fn scope(&self) -> Option<Scope> {
        (!self.clusters.is_empty() || !self.namespaces.is_empty()).then(|| Scope {
            clusters: self.clusters.clone(),
            namespaces: self.namespaces.clone(),
        })
    }
}

/// A parsed token hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHash {
    salt: Vec<u8>,
    digest: Vec<u8>,
}

impl TokenHash {
    /// Parses `sha256:<salt hex>:<digest hex>`, naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split(':');
        let (Some(scheme), Some(salt), Some(digest), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(
                "must be sha256:<salt hex>:<digest hex> (make one with `infrawatch token new`)"
                    .into(),
            );
        };
        if scheme != "sha256" {
            return Err(format!("hash scheme {scheme:?} is not sha256"));
        }
        let salt = from_hex(salt)
            .filter(|s| s.len() == SALT_BYTES)
            .ok_or_else(|| format!("the salt must be {} hex digits", SALT_BYTES * 2))?;
        let digest = from_hex(digest)
            .filter(|d| d.len() == SHA256.output_len())
            .ok_or_else(|| format!("the digest must be {} hex digits", SHA256.output_len() * 2))?;
        Ok(Self { salt, digest })
    }

    /// The hash of `token` with a fresh random salt.
    pub fn new(token: &str) -> Result<Self, ring::error::Unspecified> {
        let mut salt = vec![0u8; SALT_BYTES];
        SystemRandom::new().fill(&mut salt)?;
        let digest = salted(&salt, token);
        Ok(Self { salt, digest })
    }

    /// True when `token` hashes to this (compared in constant time).
    pub fn matches(&self, token: &str) -> bool {
        constant_time_eq(&salted(&self.salt, token), &self.digest)
    }
}

impl std::fmt::Display for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}:{}", to_hex(&self.salt), to_hex(&self.digest))
    }
}

/// A fresh random token: 64 hex digits (256 bits).
pub fn generate() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(to_hex(&bytes))
}

/// The tokens REST accepts, parsed once at start-up.
#[derive(Debug, Clone, Default)]
pub struct TokenSet {
    tokens: Vec<(TokenConfig, TokenHash, Option<Arc<Scope>>)>,
}

impl TokenSet {
    /// Parses every token's hash (configuration validation reports bad ones first).
    pub fn new(configs: &[TokenConfig]) -> Result<Self, String> {
        let tokens = configs
            .iter()
            .map(|c| {
                TokenHash::parse(&c.hash)
                    .map(|h| (c.clone(), h, c.scope().map(Arc::new)))
                    .map_err(|e| format!("rest.tokens {:?}: {e}", c.name))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { tokens })
    }

    /// True when no token is configured (REST then serves the local operator).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The principal whose token `presented` is. Every configured hash is
    /// computed, so the time taken does not tell which one matched.
    pub fn principal(&self, presented: &str) -> Option<Principal> {
        let mut found = None;
        for (config, hash, scope) in &self.tokens {
            if hash.matches(presented) && found.is_none() {
                found = Some(Principal {
                    name: config.name.clone(),
                    role: config.role,
                    credential: Credential::Token,
                    scope: scope.clone(),
                });
            }
        }
        found
    }
}

/// Checks a token's name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn salted(salt: &[u8], token: &str) -> Vec<u8> {
    let mut input = Vec::with_capacity(salt.len() + token.len());
    input.extend_from_slice(salt);
    input.extend_from_slice(token.as_bytes());
    digest(&SHA256, &input).as_ref().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_accepts_its_token_only_and_survives_printing() {
        let token = generate().unwrap();
        assert_eq!(token.len(), 64);
        let hash = TokenHash::new(&token).unwrap();
        let printed = hash.to_string();
        let parsed = TokenHash::parse(&printed).unwrap();
        assert!(parsed.matches(&token));
        assert!(!parsed.matches(&token[1..]));
        assert!(!parsed.matches(""));
        // The same token hashes differently under another salt.
        assert_ne!(TokenHash::new(&token).unwrap().to_string(), printed);
    }

    #[test]
    fn a_malformed_hash_is_named() {
        for (text, says) in [
            ("plain-secret-token", "sha256:<salt hex>"),
            ("md5:00:00", "not sha256"),
            ("sha256:zz:00", "salt"),
            (
                "sha256:00112233445566778899aabbccddeeff:abcd",
                "digest must be 64",
            ),
        ] {
            let err = TokenHash::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn the_set_names_the_holder_and_its_role() {
        let token = generate().unwrap();
        let set = TokenSet::new(&[
            TokenConfig {
                name: "other".into(),
                role: Role::Admin,
                hash: TokenHash::new("another-token-of-sixteen")
                    .unwrap()
                    .to_string(),
                clusters: vec![],
                namespaces: vec![],
            },
            TokenConfig {
                name: "grafana".into(),
                role: Role::Reader,
                hash: TokenHash::new(&token).unwrap().to_string(),
                clusters: vec![],
                namespaces: vec!["payments".into()],
            },
        ])
        .unwrap();
        let who = set.principal(&token).unwrap();
        assert_eq!((who.name.as_str(), who.role), ("grafana", Role::Reader));
        assert_eq!(who.credential, Credential::Token);
        assert_eq!(
            who.scope.as_deref().map(|s| s.namespaces.clone()),
            Some(vec!["payments".to_string()])
        );
        assert!(set.principal("guess-guess-guess").is_none());
        assert!(!valid_name("") && !valid_name("a b") && valid_name("slo-service_1.prod"));
    }
}
