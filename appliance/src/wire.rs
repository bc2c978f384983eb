//! The repository's HTTP interface: where immutable content lives, and the JSON API.
//!
//! Immutable content is plain files under predictable paths relative to the repository's
//! base URL, so nginx, an object store or a CDN can serve it:
//!
//! | path | content |
//! | --- | --- |
//! | `chunks/<first 2 hex>/<64 hex>` | one stored chunk ([`crate::chunk`] encoding) |
//! | `manifests/<appliance>/<version>.json` | one signed manifest ([`crate::sign`]) |
//!
//! The API lives under `api/v1/`; requests and responses are JSON, authenticated calls send
//! `Authorization: Bearer <token>` from [`LoginResponse`]. Errors are an HTTP status plus an
//! [`ApiError`] body.

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::user::UserDiskManifest;
use crate::userkey::WrappedKey;

/// Version of the API (in every path and response).
pub const API_FORMAT: u32 = 1;
/// Login: POST [`LoginRequest`] → [`LoginResponse`]; 401 wrong user or password
/// (deliberately the same for both), 429 too many failures (see `retry_after_secs`).
pub const LOGIN_PATH: &str = "/api/v1/login";
/// Logout: POST, authenticated, empty body → 204. Ends the session token.
pub const LOGOUT_PATH: &str = "/api/v1/logout";
/// Which of these chunks does the repository lack? POST [`MissingChunksRequest`] →
/// [`MissingChunksResponse`], authenticated. Lets a terminal upload only what is new.
pub const MISSING_CHUNKS_PATH: &str = "/api/v1/chunks/missing";
/// Most ids one [`MISSING_CHUNKS_PATH`] request may carry (413 `too_large` above): a
/// terminal with more changed chunks asks in batches.
pub const MAX_MISSING_IDS: usize = 65536;
/// Prefix of the user-disk endpoints, see [`user_disk_api_path`].
pub const USER_DISK_PREFIX: &str = "/api/v1/userdisks/";
/// Prefix of the chunk upload endpoint, see [`chunk_upload_path`].
pub const CHUNK_UPLOAD_PREFIX: &str = "/api/v1/chunks/";
/// The logged-in user's wrapped data key: PUT [`SetKeyRequest`] → 204. Accepted when the
/// user has no key yet (a record written before sealing: the terminal makes one at login),
/// or to add a recovery wrap to the same key; 409 `conflict` otherwise.
pub const KEY_PATH: &str = "/api/v1/key";
/// The user changes their own password: POST [`ChangePasswordRequest`] → 204. The old
/// password is checked (and counted as a login attempt); the data key stays the same, so
/// the terminal sends it wrapped with the new password. Ends the user's sessions.
pub const PASSWORD_PATH: &str = "/api/v1/password";

/// Relative path of a stored chunk (also its path under the repository's `public/`).
pub fn chunk_path(id: &ChunkId) -> String {
    let hex = id.to_hex();
    format!("chunks/{}/{}", &hex[..2], hex)
}

/// Relative path of a signed manifest.
pub fn manifest_path(appliance: &str, version: u64) -> String {
    format!("manifests/{appliance}/{version}.json")
}

/// Upload one chunk: PUT, authenticated, body = the stored encoding → 201 stored, 200 already
/// present, 400 if it does not decode or does not hash to the id in the path.
pub fn chunk_upload_path(id: &ChunkId) -> String {
    format!("{CHUNK_UPLOAD_PREFIX}{id}")
}

/// A user disk of the logged-in user: GET → [`UserDiskManifest`] (404 `no_user_disk` if it was
/// never committed: start from the appliance's initial content); PUT [`CommitUserDiskRequest`]
/// → [`CommitUserDiskResponse`], 409 [`ApiError`] with `current_version` when
/// `expected_version` is stale, 400 `missing_chunks` listing ids not uploaded yet.
pub fn user_disk_api_path(appliance: &str, disk: &str) -> String {
    format!("{USER_DISK_PREFIX}{appliance}/{disk}")
}

/// Body of a login.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// User name.
    pub user: String,
    /// Password (sent over TLS in deployments).
    pub password: String,
}

/// One appliance of a user's set, at the version a login hands out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplianceRef {
    /// Appliance name.
    pub name: String,
    /// Latest published version.
    pub version: u64,
    /// Relative path of the signed manifest ([`manifest_path`]).
    pub manifest_path: String,
    /// sha256 (hex) of the signed manifest file's bytes, to check before parsing it.
    pub manifest_sha256: String,
}

/// The state of one user disk at login.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDiskRef {
    /// Appliance name.
    pub appliance: String,
    /// Disk name.
    pub disk: String,
    /// Current committed version, 0 if never committed.
    pub version: u64,
}

/// Reply to a successful login.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginResponse {
    /// [`API_FORMAT`].
    pub format: u32,
    /// Bearer token for the authenticated calls (256 random bits, hex).
    pub token: String,
    /// Seconds the token stays valid.
    pub expires_in_secs: u64,
    /// The user name, as stored.
    pub user: String,
    /// The user's appliance set, in start order. Appliances of the set that have no
    /// published version yet are left out and named in `unavailable`.
    pub appliances: Vec<ApplianceRef>,
    /// Appliances of the set that have no published version.
    #[serde(default)]
    pub unavailable: Vec<String>,
    /// Every user disk of the set's appliances with its committed version.
    pub user_disks: Vec<UserDiskRef>,
    /// A fresh argon2id verifier of this password (new salt, not the repository's own) for
    /// the terminal to keep for offline login. Check with [`crate::user::verify_password`].
    /// Terminals that received `data_key` keep that instead (it opens only with the
    /// password, so it is the offline check too), and the repository sends this only to
    /// users without one: a password hash less per login is half a login's CPU there.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub offline_verifier: String,
    /// The user's data key, wrapped with the password (and the organisation's recovery
    /// key). None: the record predates sealing; the terminal makes a key and sends it
    /// with [`KEY_PATH`] before it writes anything back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<WrappedKey>,
    /// The organisation's recovery public key (`x25519:<hex>`), if the repository has one:
    /// a terminal that makes a data key seals it to this key too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<String>,
}

/// Body of [`KEY_PATH`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetKeyRequest {
    /// The wrapped key to keep in the user's record.
    pub key: WrappedKey,
}

/// Body of [`PASSWORD_PATH`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The current password (checked again: a token alone cannot change it).
    pub old_password: String,
    /// The new password.
    pub new_password: String,
    /// The user's data key (the same key id) wrapped with the new password.
    pub key: WrappedKey,
}

/// Body of [`MISSING_CHUNKS_PATH`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingChunksRequest {
    /// Ids to ask about (at most 65536 per request).
    pub ids: Vec<ChunkId>,
}

/// Reply of [`MISSING_CHUNKS_PATH`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MissingChunksResponse {
    /// The subset of the ids the repository does not have, in request order.
    pub missing: Vec<ChunkId>,
}

/// Body of a user-disk commit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitUserDiskRequest {
    /// The version the terminal started from (0 if none was committed yet). The commit
    /// succeeds only if this is still the current version.
    pub expected_version: u64,
    /// The new content; its `version` must be `expected_version + 1`, and its `user`,
    /// `appliance`, `disk` must match the session and path.
    pub manifest: UserDiskManifest,
}

/// Reply to a successful user-disk commit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitUserDiskResponse {
    /// The version now current.
    pub version: u64,
}

/// Every error reply's body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    /// Machine-readable: `bad_credentials`, `rate_limited`, `unauthorized`, `bad_request`,
    /// `not_found`, `no_user_disk`, `conflict`, `missing_chunks`, `chunk_mismatch`,
    /// `too_large`, `quota_exceeded`, `overloaded`, `internal`.
    pub code: String,
    /// What happened and what to do, for people.
    pub message: String,
    /// With `rate_limited` and `overloaded`: seconds to wait (also the `Retry-After` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// With `conflict`: the version that is current now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// With `missing_chunks`: the ids the repository does not have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<ChunkId>,
}

impl ApiError {
    /// An error with just a code and message.
    pub fn new(code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: code.into(),
            message: message.into(),
            retry_after_secs: None,
            current_version: None,
            missing: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let id = ChunkId::of(b"abc");
        assert_eq!(
            chunk_path(&id),
            "chunks/ba/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(manifest_path("desktop", 3), "manifests/desktop/3.json");
        assert_eq!(
            user_disk_api_path("desktop", "user"),
            "/api/v1/userdisks/desktop/user"
        );
        assert!(chunk_upload_path(&id).starts_with(CHUNK_UPLOAD_PREFIX));
    }
}
