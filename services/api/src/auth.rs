//! API keys.
//!
//! A key reads `tsk_<key id>_<secret>`. The key id finds the account row with an index
//! lookup; the secret is compared as a SHA-256 hash in constant time, so neither the lookup
//! nor the comparison tells an attacker how much of a guess was right. A fast hash is
//! enough here: the secret is 256 random bits, not a password that could be brute-forced.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use platform::problem::{Problem, ProblemType};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::app::AppState;
use crate::error::ApiError;

const PREFIX: &str = "tsk_";

/// The tenant a request acts for.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: Uuid,
    pub plan: String,
    /// The public part of the API key: what rate limits are counted by.
    pub key_id: String,
}

/// A freshly issued key. The full key is shown once, at creation, and never stored.
pub struct IssuedKey {
    pub key_id: String,
    pub secret_hash: Vec<u8>,
    pub full_key: String,
}

pub fn issue_key() -> IssuedKey {
    let mut rng = rand::rng();
    let mut id_bytes = [0u8; 8];
    let mut secret_bytes = [0u8; 32];
    rng.fill_bytes(&mut id_bytes);
    rng.fill_bytes(&mut secret_bytes);

    let key_id = hex::encode(id_bytes);
    let secret = hex::encode(secret_bytes);
    IssuedKey {
        secret_hash: Sha256::digest(secret.as_bytes()).to_vec(),
        full_key: format!("{PREFIX}{key_id}_{secret}"),
        key_id,
    }
}

/// Splits `tsk_<key id>_<secret>` into its parts; `None` for anything else.
fn split_key(key: &str) -> Option<(&str, &str)> {
    let (key_id, secret) = key.strip_prefix(PREFIX)?.split_once('_')?;
    let well_formed = key_id.len() == 16
        && secret.len() == 64
        && key_id
            .bytes()
            .chain(secret.bytes())
            .all(|b| b.is_ascii_hexdigit());
    well_formed.then_some((key_id, secret))
}

/// Creates an account and returns it with its API key. Runs inside the caller's session.
pub async fn create_account(
    connection: &mut PgConnection,
    name: &str,
    plan: &str,
) -> Result<(Uuid, String), sqlx::Error> {
    let issued = issue_key();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO accounts (id, name, plan, api_key_id, api_key_hash) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(name)
    .bind(plan)
    .bind(&issued.key_id)
    .bind(&issued.secret_hash)
    .execute(connection)
    .await?;
    Ok((id, issued.full_key))
}

/// The account, plan and secret hash behind a key id.
async fn find_key(
    connection: &mut PgConnection,
    key_id: String,
) -> Result<Option<KeyRecord>, sqlx::Error> {
    sqlx::query_as("SELECT id, plan, api_key_hash FROM accounts WHERE api_key_id = $1")
        .bind(key_id)
        .fetch_optional(connection)
        .await
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::Unauthorized(detail.to_owned())
}

/// The 401 response, with the `WWW-Authenticate` challenge RFC 9110 asks for.
pub fn unauthorized_response(detail: String) -> Response {
    let mut response = Problem::new(ProblemType::Unauthorized, detail).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tierstack\""),
    );
    response
}

/// Finds the account behind the request's `Authorization` header.
pub async fn authenticate(headers: &HeaderMap, app: &AppState) -> Result<Account, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("send your API key as `Authorization: Bearer tsk_...`"))?;
    let key = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("the Authorization header must use the Bearer scheme"))?;
    let (key_id, secret) =
        split_key(key).ok_or_else(|| unauthorized("the API key is malformed"))?;

    let mut found = app.keys.get(key_id);
    if found.is_none() {
        found = app
            .db
            .read("authenticate", |c| Box::pin(find_key(c, key_id.to_owned())))
            .await?;
    }
    if found.is_none() {
        // A key created a moment ago may not have reached the replica yet; a valid key
        // must never be refused for that. Only well-formed keys get this far, and a miss
        // costs one indexed lookup on the primary.
        found = app
            .db
            .read_on_primary("authenticate_on_primary", |c| {
                Box::pin(find_key(c, key_id.to_owned()))
            })
            .await?;
    }

    let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    match found {
        Some((id, plan, stored)) if bool::from(presented[..].ct_eq(&stored[..])) => {
            app.keys.put(key_id, (id, plan.clone(), stored));
            Ok(Account {
                id,
                plan,
                key_id: key_id.to_owned(),
            })
        }
        _ => Err(unauthorized("the API key is not valid")),
    }
}

/// What the database holds for a key id: account, plan, secret hash.
pub type KeyRecord = (Uuid, String, Vec<u8>);

/// Keys recently found valid, per process, so that authenticating a request does not cost
/// a database read: with it, a cached payment read touches no PostgreSQL at all. Only the
/// stored hash is kept, and every request's secret is still compared against it.
///
/// Limitation: a revoked key or a changed plan takes effect after at most the TTL
/// (`AUTH_CACHE_TTL_SECONDS`); revocation does not exist in the API yet.
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, KeyRecord)>>,
}

/// Beyond this many keys the cache drops its expired entries, and if that is not enough,
/// starts afresh: a bound, not an eviction policy worth more code.
const KEY_CACHE_MAX: usize = 100_000;

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Default::default(),
        }
    }

    fn get(&self, key_id: &str) -> Option<KeyRecord> {
        let entries = self.entries.lock().expect("key cache lock");
        entries
            .get(key_id)
            .filter(|(stored_at, _)| stored_at.elapsed() < self.ttl)
            .map(|(_, record)| record.clone())
    }

    fn put(&self, key_id: &str, record: KeyRecord) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("key cache lock");
        if entries.len() >= KEY_CACHE_MAX {
            let ttl = self.ttl;
            entries.retain(|_, (stored_at, _)| stored_at.elapsed() < ttl);
            if entries.len() >= KEY_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(key_id.to_owned(), (Instant::now(), record));
    }
}

/// Handlers take the account that the authentication middleware (see `app::router`) put
/// in the request's extensions.
impl FromRequestParts<AppState> for Account {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Account>()
            .cloned()
            .ok_or_else(|| unauthorized("send your API key as `Authorization: Bearer tsk_...`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_key_splits_back_into_its_parts_and_hashes_to_the_stored_hash() {
        let issued = issue_key();
        let (key_id, secret) = split_key(&issued.full_key).unwrap();
        assert_eq!(key_id, issued.key_id);
        assert_eq!(
            Sha256::digest(secret.as_bytes()).to_vec(),
            issued.secret_hash
        );
    }

    #[test]
    fn malformed_keys_are_refused_before_any_lookup() {
        assert!(split_key("tsk_short_secret").is_none());
        assert!(split_key("sk_live_0123456789abcdef").is_none());
        let issued = issue_key();
        assert!(split_key(&issued.full_key.replace("tsk_", "tsx_")).is_none());
    }
}
