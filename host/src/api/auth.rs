//! Authentication and authorisation (DESIGN §7): Bearer JWTs signed HS256 with `ARAGORA_JWT_SECRET`, or RS256 /
//! EdDSA verified with `ARAGORA_JWT_PUBLIC_KEY` (the key's type decides which); the algorithm pinned (`none` and
//! every other `alg` refused), `exp` required, 60 s leeway. A verified token becomes a
//! [`Caller`]: its subject, its permissions, and — for `sub = agent:<id>` — the one agent it may act for.
//! Handlers ask the caller for what they need; nothing else here knows about routes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::errors::{ApiError, ApiResult};

/// Shortest HS256 secret accepted (DESIGN §7).
pub const MIN_SECRET_BYTES: usize = 32;
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 60;

/// A permission a token may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Register, heartbeat, pause, select agents.
    Agents,
    /// Submit, claim, report and manage tasks.
    Tasks,
    /// Every GET.
    Read,
    /// Manage plugins.
    Plugins,
    /// Everything.
    Admin,
}

impl Permission {
    /// All permissions.
    pub const ALL: [Permission; 5] =
        [Permission::Agents, Permission::Tasks, Permission::Read, Permission::Plugins, Permission::Admin];

    /// The name in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Agents => "controlplane:agents",
            Permission::Tasks => "controlplane:tasks",
            Permission::Read => "controlplane:read",
            Permission::Plugins => "controlplane:plugins",
            Permission::Admin => "controlplane:admin",
        }
    }

    /// The permission of a token's name (`controlplane:tasks`, or the short `tasks`).
    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == name || p.as_str().strip_prefix("controlplane:") == Some(name))
    }
}

/// The claims we read and write.
#[derive(Debug, Deserialize, Serialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    permissions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    caps: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// Why an authenticator could not be built (errors name the variable).
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The secret is too short to resist guessing.
    #[error("ARAGORA_JWT_SECRET: must be at least {MIN_SECRET_BYTES} bytes (got {0})")]
    SecretTooShort(usize),
    /// The public key is neither an RSA nor an Ed25519 PEM.
    #[error("ARAGORA_JWT_PUBLIC_KEY: {0}")]
    BadPublicKey(String),
    /// Only the holder of the private key signs RS256/EdDSA tokens; this server verifies them.
    #[error(
        "this server verifies {0:?} tokens with a public key and cannot sign any (issue them where the private key is)"
    )]
    CannotIssue(Algorithm),
}

/// Verified tokens remembered at most: past this the cache is emptied (tokens are re-verified, nothing breaks).
const TOKEN_CACHE_LIMIT: usize = 10_000;

/// Verifies and issues tokens.
pub struct Authenticator {
    /// Verified tokens and their `exp`, so the hot path skips the HMAC (DESIGN §9); a lock held for one lookup.
    cache: parking_lot::Mutex<crate::FastMap<String, (Caller, u64)>>,
    decoding: DecodingKey,
    /// The HS256 secret signs too; with a public key there is nothing to sign with.
    encoding: Option<EncodingKey>,
    algorithm: Algorithm,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl Authenticator {
    /// HS256 with `secret` (≥ 32 bytes); `iss`/`aud` checked when given.
    pub fn hs256(secret: &[u8], issuer: Option<String>, audience: Option<String>) -> Result<Self, AuthConfigError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthConfigError::SecretTooShort(secret.len()));
        }
        let keys = (DecodingKey::from_secret(secret), Some(EncodingKey::from_secret(secret)));
        Ok(Self::with_keys(Algorithm::HS256, keys, issuer, audience))
    }

    /// RS256 or EdDSA, verified with a PEM public key (`-----BEGIN PUBLIC KEY-----`): an Ed25519 key pins EdDSA,
    /// an RSA key RS256. Such a server cannot issue tokens.
    pub fn public_key(pem: &[u8], issuer: Option<String>, audience: Option<String>) -> Result<Self, AuthConfigError> {
        let (algorithm, decoding) = match DecodingKey::from_ed_pem(pem) {
            Ok(key) => (Algorithm::EdDSA, key),
            Err(_) => match DecodingKey::from_rsa_pem(pem) {
                Ok(key) => (Algorithm::RS256, key),
                Err(error) => {
                    return Err(AuthConfigError::BadPublicKey(format!(
                        "not an Ed25519 or RSA public key in PEM form ({error})"
                    )));
                }
            },
        };
        Ok(Self::with_keys(algorithm, (decoding, None), issuer, audience))
    }

    fn with_keys(
        algorithm: Algorithm,
        (decoding, encoding): (DecodingKey, Option<EncodingKey>),
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Self {
        // `Validation::new` pins the one algorithm: a token whose header names another (or `none`) is refused.
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Authenticator {
            cache: parking_lot::Mutex::default(),
            decoding,
            encoding,
            algorithm,
            validation,
            issuer,
            audience,
        }
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A random secret for one run (loopback development servers with no configured secret).
    pub fn generated_secret() -> Vec<u8> {
        let bytes: [u8; 32] = rand::random();
        hex::encode(bytes).into_bytes()
    }

    /// Signs a token for `sub` with `permissions`, valid for `ttl` (HS256 servers only).
    pub fn issue(&self, sub: &str, permissions: &[Permission], ttl: Duration) -> Result<String, AuthConfigError> {
        let encoding = self.encoding.as_ref().ok_or(AuthConfigError::CannotIssue(self.algorithm))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims {
            sub: Some(sub.to_string()),
            exp: (now + ttl).as_secs(),
            permissions: Some(permissions.iter().map(|p| p.as_str().to_string()).collect()),
            scope: None,
            caps: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        Ok(jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding)
            .expect("HS256 signing of plain claims cannot fail"))
    }

    /// Verifies a bearer token into a caller (from the cache until its `exp`); any failure is a 401.
    pub fn verify(&self, token: &str) -> ApiResult<Caller> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if let Some((caller, exp)) = self.cache.lock().get(token)
            && now <= exp.saturating_add(LEEWAY_SECONDS)
        {
            return Ok(caller.clone());
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| ApiError::unauthorized(why_refused(e.kind())))?;
        let exp = data.claims.exp;
        let caller = Self::caller(data.claims)?;
        let mut cache = self.cache.lock();
        if cache.len() >= TOKEN_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(token.to_string(), (caller.clone(), exp));
        Ok(caller)
    }

    fn caller(claims: Claims) -> ApiResult<Caller> {
        let sub = claims.sub.filter(|s| !s.is_empty()).ok_or_else(|| ApiError::unauthorized("token has no sub"))?;
        let scope = claims.scope.unwrap_or_default();
        let names =
            claims.permissions.unwrap_or_default().into_iter().chain(scope.split_whitespace().map(str::to_string));
        let permissions = names.filter_map(|n| Permission::parse(&n)).collect();
        let agent = sub.strip_prefix("agent:").map(str::to_string);
        let caps = claims.caps.map(|caps| Arc::new(caps.iter().map(|c| c.trim().to_ascii_lowercase()).collect()));
        Ok(Caller { sub, permissions, agent, caps })
    }
}

/// Who is calling, from a verified token. Every request copies one out of the token cache, so what it holds is
/// kept cheap to copy: permissions as bits, the `caps` claim shared (the subject is still a string).
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's subject (`submitted_by` of the tasks it submits).
    pub sub: String,
    permissions: Permissions,
    /// The agent an `agent:<id>` token is bound to.
    pub agent: Option<String>,
    /// The capabilities the token may register (its `caps` claim), lower-cased; `None` = any.
    pub caps: Option<Arc<HashSet<String>>>,
}

/// A set of [`Permission`]s, one bit each (by declaration order; a ninth permission needs a wider integer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Permissions(u8);

const _: () = {
    let mut i = 0;
    while i < Permission::ALL.len() {
        assert!((Permission::ALL[i] as u8) < 8, "every permission must have its bit in a u8");
        i += 1;
    }
};

impl Permissions {
    fn contains(self, permission: Permission) -> bool {
        self.0 & (1 << permission as u8) != 0
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(permissions: I) -> Self {
        Permissions(permissions.into_iter().fold(0, |bits, permission| bits | 1 << permission as u8))
    }
}

impl Caller {
    /// Whether the token carries `permission` (admin carries all).
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(permission) || self.permissions.contains(Permission::Admin)
    }

    /// 403 unless the token carries `permission`.
    pub fn require(&self, permission: Permission) -> ApiResult<()> {
        if self.has(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("the token lacks the {} permission", permission.as_str())))
        }
    }

    /// Whether the token is an admin's.
    pub fn is_admin(&self) -> bool {
        self.permissions.contains(Permission::Admin)
    }

    /// 403 when an agent token tries to act for another agent.
    pub fn acting_for(&self, agent_id: &str) -> ApiResult<()> {
        match &self.agent {
            Some(own) if own != agent_id => Err(ApiError::forbidden(format!(
                "a token for agent {own} may act only for that agent, not for {agent_id}"
            ))),
            _ => Ok(()),
        }
    }

    /// 403 when the token's `caps` claim does not cover every capability in `capabilities`.
    pub fn may_register(&self, capabilities: &[String]) -> ApiResult<()> {
        let Some(caps) = &self.caps else { return Ok(()) };
        match capabilities.iter().find(|c| !caps.contains(&c.trim().to_ascii_lowercase())) {
            Some(outside) => {
                Err(ApiError::forbidden(format!("the token's caps claim does not allow capability {outside:?}")))
            }
            None => Ok(()),
        }
    }

    /// 403 for agent tokens: they may only do their own agent's work.
    pub fn not_an_agent(&self, action: &str) -> ApiResult<()> {
        match &self.agent {
            Some(own) => Err(ApiError::forbidden(format!("a token for agent {own} may not {action}"))),
            None => Ok(()),
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        let text = header.to_str().map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let caller = state.auth.verify(token)?;
        if let Some(actor) = parts.extensions.get::<super::audit::AuditActor>() {
            actor.set(&caller.sub);
        }
        Ok(caller)
    }
}

/// What a refused token is told: one of a few fixed sentences. The parser's own message may quote the token's
/// header (a client's text, control characters included) and says more about our parsing than a client needs.
fn why_refused(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "invalid token: expired",
        ErrorKind::ImmatureSignature => "invalid token: not valid yet (nbf)",
        ErrorKind::InvalidSignature => "invalid token: bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            "invalid token: algorithm not accepted"
        }
        ErrorKind::MissingRequiredClaim(_) => "invalid token: a required claim (exp) is missing",
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience | ErrorKind::InvalidSubject => {
            "invalid token: issuer, audience or subject not accepted"
        }
        _ => "invalid token: malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_short_secret_is_refused_naming_the_variable() {
        let error = Authenticator::hs256(b"short", None, None).unwrap_err();
        assert!(error.to_string().starts_with("ARAGORA_JWT_SECRET"), "{error}");
    }

    #[test]
    fn issued_tokens_verify_into_their_caller_and_stay_cached() {
        let auth = Authenticator::hs256(SECRET, None, None).unwrap();
        let token = auth.issue("agent:a-1", &[Permission::Tasks], Duration::from_secs(60)).unwrap();
        for _ in 0..2 {
            let caller = auth.verify(&token).unwrap();
            assert_eq!(caller.agent.as_deref(), Some("a-1"));
            assert!(caller.has(Permission::Tasks) && !caller.has(Permission::Read));
            assert!(caller.acting_for("a-2").is_err() && caller.acting_for("a-1").is_ok());
        }
        let other = Authenticator::hs256(b"another-secret-another-secret-xx", None, None).unwrap();
        assert_eq!(other.verify(&token).unwrap_err().status(), axum::http::StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_public_key_pins_its_algorithm_and_cannot_issue() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/jwt");
        let ed = std::fs::read(format!("{fixtures}/ed25519-public.pem")).unwrap();
        let rsa = std::fs::read(format!("{fixtures}/rsa-public.pem")).unwrap();
        assert_eq!(Authenticator::public_key(&ed, None, None).unwrap().algorithm(), Algorithm::EdDSA);
        let rsa = Authenticator::public_key(&rsa, None, None).unwrap();
        assert_eq!(rsa.algorithm(), Algorithm::RS256);
        assert!(matches!(rsa.issue("x", &[], Duration::from_secs(1)), Err(AuthConfigError::CannotIssue(_))));
        let error = Authenticator::public_key(b"not a key", None, None).unwrap_err();
        assert!(error.to_string().starts_with("ARAGORA_JWT_PUBLIC_KEY"), "{error}");
    }

    #[test]
    fn permissions_parse_long_and_short_names() {
        assert_eq!(Permission::parse("controlplane:read"), Some(Permission::Read));
        assert_eq!(Permission::parse("admin"), Some(Permission::Admin));
        assert_eq!(Permission::parse("root"), None);
    }
}
