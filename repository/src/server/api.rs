//! The JSON API (`/api/v1/...`): login, logout, chunk upload, user-disk read and commit.
//! Types and paths are in `appliance::wire`.
//!
//! A call goes through two steps so that nothing costly happens for a client before it
//! has shown it may ask: [`parse`] (cheap, on the connection's task) finds the endpoint,
//! and with [`Call::body_limit`] and [`Call::needs_auth`] the server checks the token and
//! the body's declared length before it reads a byte of the body; [`handle`] then runs on
//! a handler thread with the complete body.

use std::net::SocketAddr;

use appliance::chunk::{check_stored, CHUNK_HEADER_LEN, MAX_CHUNK_SIZE};
use appliance::names::validate_name;
use appliance::user::{hash_password, kdf_params_of, verify_password};
use appliance::wire::*;
use appliance::{ChunkId, DiskRole, SignedManifest};
use sha2::{Digest, Sha256};

use super::{Reply, State};

/// Largest JSON body accepted for a commit whatever the disk (a sealed user-disk manifest
/// of a 64 GiB disk at 64 KiB chunks is about 120 MB of JSON; larger disks need larger
/// chunks).
pub(crate) const MAX_JSON: usize = 144 << 20;
/// Largest chunk upload.
pub(crate) const MAX_CHUNK_UPLOAD: usize = MAX_CHUNK_SIZE + CHUNK_HEADER_LEN + 64 * 1024;
/// Largest login body.
pub(crate) const MAX_LOGIN: usize = 64 * 1024;
/// Largest `chunks/missing` body: [`MAX_MISSING_IDS`] ids of 64 hex digits, quoted, with
/// commas, and room for whitespace.
pub(crate) const MAX_MISSING_BODY: usize = MAX_MISSING_IDS * 72 + 4096;
/// Bytes of JSON one chunk-list entry may take in a commit (`"<64 hex>",` and spacing,
/// and its 32-byte plaintext id in the sealed index: 43 bytes of base64).
const COMMIT_BYTES_PER_ENTRY: usize = 128;
/// Largest body of the key and password calls (a wrapped key is under 1 KiB).
const MAX_KEY_BODY: usize = 16 * 1024;

/// One API endpoint, as found from method and path.
#[derive(Clone, Debug)]
pub(crate) enum Call {
    Login,
    Logout,
    Missing,
    Upload(String),
    GetUserDisk(String, String),
    Commit(String, String),
    SetKey,
    ChangePassword,
}

/// Finds the endpoint, or the error reply for an unknown one.
pub(super) fn parse(method: &str, path: &str) -> Result<Call, Reply> {
    match (method, path) {
        ("POST", LOGIN_PATH) => return Ok(Call::Login),
        ("POST", LOGOUT_PATH) => return Ok(Call::Logout),
        ("POST", MISSING_CHUNKS_PATH) => return Ok(Call::Missing),
        ("PUT", KEY_PATH) => return Ok(Call::SetKey),
        ("POST", PASSWORD_PATH) => return Ok(Call::ChangePassword),
        _ => {}
    }
    if method == "PUT" {
        if let Some(id) = path.strip_prefix(CHUNK_UPLOAD_PREFIX) {
            return Ok(Call::Upload(id.to_owned()));
        }
    }
    if matches!(method, "GET" | "PUT") {
        if let Some(rest) = path.strip_prefix(USER_DISK_PREFIX) {
            let Some((app, disk)) = rest.split_once('/') else {
                return Err(Reply::err(
                    404,
                    "not_found",
                    format!("{path}: expected {USER_DISK_PREFIX}<appliance>/<disk>"),
                ));
            };
            if validate_name("appliance name", app).is_err()
                || validate_name("disk name", disk).is_err()
            {
                return Err(Reply::err(
                    404,
                    "not_found",
                    format!("{path}: no such appliance or disk"),
                ));
            }
            let (app, disk) = (app.to_owned(), disk.to_owned());
            return Ok(if method == "GET" {
                Call::GetUserDisk(app, disk)
            } else {
                Call::Commit(app, disk)
            });
        }
    }
    Err(Reply::err(
        404,
        "not_found",
        format!(
            "{method} {path} is not an API endpoint of this repository (API version {API_FORMAT})"
        ),
    ))
}

impl Call {
    /// Everything but login needs a session token.
    pub(super) fn needs_auth(&self) -> bool {
        !matches!(self, Call::Login)
    }

    /// The largest body this call takes. A commit's limit follows the disk's size (known
    /// from the appliance's manifest and the user's current version), so that a body of
    /// millions of `null` entries is refused before it is read, let alone parsed. May
    /// read files: call it on a handler thread.
    pub(super) fn body_limit(&self, state: &State, user: &str) -> Result<usize, Reply> {
        Ok(match self {
            Call::Login => MAX_LOGIN,
            Call::Logout | Call::GetUserDisk(..) => 4096,
            Call::Missing => MAX_MISSING_BODY,
            Call::Upload(_) => MAX_CHUNK_UPLOAD,
            Call::SetKey | Call::ChangePassword => MAX_KEY_BODY,
            Call::Commit(app, disk) => commit_limit(state, user, app, disk)?,
        })
    }

    /// True if [`Call::body_limit`] needs a handler thread.
    pub(super) fn limit_reads_files(&self) -> bool {
        matches!(self, Call::Commit(..))
    }
}

/// Chunk entries the user disk `app`/`disk` of `user` may have: as many as its size in the
/// appliance's latest manifest or in the user's committed version, whichever is larger.
fn commit_entries(state: &State, user: &str, app: &str, disk: &str) -> Result<u64, Reply> {
    let mut entries = 0u64;
    if let Some(v) = state.repo.latest(app).map_err(internal)? {
        let bytes = std::fs::read(state.repo.manifest_file(app, v))
            .map_err(|e| internal(format!("manifest {app} {v}: {e}")))?;
        let signed: SignedManifest = serde_json::from_slice(&bytes)
            .map_err(|e| internal(format!("manifest {app} {v} is damaged: {e}")))?;
        if let Some(d) = signed
            .manifest
            .disks
            .iter()
            .find(|d| d.name == disk && d.role == DiskRole::User)
        {
            entries = d.image.chunks.len() as u64;
        }
    }
    if let Some(m) = state.repo.user_disk(user, app, disk).map_err(internal)? {
        entries = entries.max(m.image.chunks.len() as u64);
    }
    if entries == 0 {
        return Err(Reply::err(
            404,
            "not_found",
            format!("{app} has no user disk {disk}"),
        ));
    }
    Ok(entries)
}

fn commit_limit(state: &State, user: &str, app: &str, disk: &str) -> Result<usize, Reply> {
    let entries = commit_entries(state, user, app, disk)?;
    Ok((entries as usize)
        .saturating_mul(COMMIT_BYTES_PER_ENTRY)
        .saturating_add(64 * 1024)
        .min(MAX_JSON))
}

/// Runs `call` with its complete body. `user` and `token` are the authenticated session
/// (empty for login).
pub(super) fn handle(
    state: &State,
    call: Call,
    user: &str,
    token: &str,
    body: &[u8],
    peer: SocketAddr,
) -> Reply {
    match call {
        Call::Login => login(state, body, peer),
        Call::Logout => {
            state.sessions.remove(token);
            Reply::Empty(204)
        }
        Call::Missing => missing(state, body),
        Call::Upload(id) => upload_chunk(state, user, body, &id),
        Call::GetUserDisk(app, disk) => get_user_disk(state, user, &app, &disk),
        Call::Commit(app, disk) => commit_user_disk(state, body, user, &app, &disk),
        Call::SetKey => set_key(state, user, body),
        Call::ChangePassword => change_password(state, user, body, peer),
    }
}

/// The session of a bearer token, or the 401 to send. The token must be known and
/// unexpired, and its user must still exist with the credentials the token was issued
/// against (`collective-repo user passwd` and `user remove` end sessions). This reads the
/// user's record file's metadata (and the record when it changed), which is cheap enough
/// to do on the connection's task, before any body is read.
pub(super) fn authenticate(
    state: &State,
    authorization: Option<&str>,
) -> Result<(String, String), Reply> {
    let Some(token) = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return Err(Reply::err(
            401,
            "unauthorized",
            "this call needs `Authorization: Bearer <token>` from a login",
        ));
    };
    let Some(session) = state.sessions.get(token) else {
        return Err(Reply::err(
            401,
            "unauthorized",
            "the session token is unknown or expired: log in again",
        ));
    };
    match state.credentials.current(&state.repo, &session.user) {
        Ok(Some(now)) if now == session.credentials => Ok((session.user, token.to_owned())),
        Ok(_) => {
            state.sessions.remove(token);
            log::info!(
                "session of {} ended: the user's password was changed or the user was removed",
                session.user
            );
            Err(Reply::err(
                401,
                "session_revoked",
                format!(
                    "the session of {} has ended: the password was changed or the user was removed since this login; log in again",
                    session.user
                ),
            ))
        }
        Err(e) => Err(internal(e)),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| {
        Reply::err(
            400,
            "bad_request",
            format!("the body is not the expected JSON: {e}"),
        )
    })
}

fn internal(e: impl std::fmt::Display) -> Reply {
    log::error!("internal error: {e}");
    Reply::err(500, "internal", format!("the repository failed: {e}"))
}

/// Checks a password (after the failed-login waits, see [`super::login_limit`]) and hands
/// out a token bound to the verifier it was checked against.
fn login(state: &State, body: &[u8], peer: SocketAddr) -> Reply {
    let body: LoginRequest = match parse_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let client = peer.ip();
    if let Some(wait) = state.limiter.wait(&body.user, client) {
        let secs = wait.as_secs() + 1;
        let mut e = ApiError::new(
            "rate_limited",
            format!("too many failed logins: wait {secs} s before trying again"),
        );
        e.retry_after_secs = Some(secs);
        return Reply::Error(429, e);
    }
    let record = match validate_name("user name", &body.user) {
        Ok(()) => match state.repo.user(&body.user) {
            Ok(r) => r,
            Err(e) => return internal(e),
        },
        Err(_) => None,
    };
    let verified = match &record {
        Some(rec) => verify_password(&rec.verifier, &body.password),
        None => {
            // Spend the same work as for a real user, so timing does not reveal names.
            let dummy = state.dummy_verifier.lock().ok().and_then(|mut d| {
                if d.is_none() {
                    *d = hash_password("dummy", state.dummy_kdf).ok();
                }
                d.clone()
            });
            if let Some(d) = dummy {
                let _ = verify_password(&d, &body.password);
            }
            Err(appliance::Error::WrongPassword)
        }
    };
    let rec = match (verified, record) {
        (Ok(()), Some(rec)) => rec,
        (Err(appliance::Error::WrongPassword), _) | (Ok(()), None) => {
            state.limiter.failed(&body.user, client);
            log::info!("failed login for {:?} from {peer}", body.user);
            return Reply::err(401, "bad_credentials", "wrong user name or password");
        }
        (Err(e), _) => {
            return internal(format!("the record of user {} is unusable: {e}", body.user))
        }
    };
    state.limiter.succeeded(&body.user, client);

    let mut appliances = Vec::new();
    let mut unavailable = Vec::new();
    let mut user_disks = Vec::new();
    for name in &rec.appliances {
        let version = match state.repo.latest(name) {
            Ok(Some(v)) => v,
            Ok(None) => {
                unavailable.push(name.clone());
                continue;
            }
            Err(e) => return internal(e),
        };
        let bytes = match std::fs::read(state.repo.manifest_file(name, version)) {
            Ok(b) => b,
            Err(e) => return internal(format!("manifest {name} {version}: {e}")),
        };
        // The repository does not verify its own signatures here (it may not hold the
        // trusted keys); it only reads which disks are user disks.
        let signed: SignedManifest = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => return internal(format!("manifest {name} {version} is damaged: {e}")),
        };
        for disk in signed
            .manifest
            .disks
            .iter()
            .filter(|d| d.role == DiskRole::User)
        {
            let current = match state.repo.user_disk(&rec.name, name, &disk.name) {
                Ok(m) => m.map(|m| m.version).unwrap_or(0),
                Err(e) => return internal(e),
            };
            user_disks.push(UserDiskRef {
                appliance: name.clone(),
                disk: disk.name.clone(),
                version: current,
            });
        }
        appliances.push(ApplianceRef {
            name: name.clone(),
            version,
            manifest_path: manifest_path(name, version),
            manifest_sha256: hex::encode(Sha256::digest(&bytes)),
        });
    }
    // Only for a record from before sealing: a terminal keeps the wrapped data key for
    // offline login, and every hash here is CPU a whole office's logins share.
    let offline_verifier = if rec.data_key.is_some() {
        String::new()
    } else {
        match kdf_params_of(&rec.verifier).and_then(|p| hash_password(&body.password, p)) {
            Ok(v) => v,
            Err(e) => return internal(e),
        }
    };
    let recovery_key = match state.repo.recovery_key() {
        Ok(k) => k.map(|k| k.to_string()),
        Err(e) => return internal(e),
    };
    let token = state
        .sessions
        .create(&rec.name, super::credentials::fingerprint(&rec.verifier));
    log::info!("login of {} from {peer}", rec.name);
    Reply::json(
        200,
        &LoginResponse {
            format: API_FORMAT,
            token,
            expires_in_secs: state.sessions.ttl().as_secs(),
            user: rec.name,
            appliances,
            unavailable,
            user_disks,
            offline_verifier,
            data_key: rec.data_key,
            recovery_key,
        },
    )
}

/// Checks a wrapped key's shape, then takes the commit lock (record changes by the API are
/// serialized with each other) and reads the user's record.
fn record_for_key_change<'a>(
    state: &'a State,
    user: &str,
    key: &appliance::WrappedKey,
) -> Result<(std::sync::MutexGuard<'a, ()>, appliance::UserRecord), Reply> {
    if let Err(e) = key.validate() {
        return Err(Reply::err(
            400,
            "bad_request",
            format!("the wrapped key is invalid: {e}"),
        ));
    }
    let guard = state
        .commit_lock
        .lock()
        .map_err(|_| internal("the commit lock is poisoned"))?;
    match state.repo.user(user) {
        Ok(Some(r)) => Ok((guard, r)),
        Ok(None) => Err(Reply::err(
            401,
            "session_revoked",
            format!("user {user} was removed; log in again"),
        )),
        Err(e) => Err(internal(e)),
    }
}

/// Keeps a data key the user's terminal made: for a record from before sealing (no key
/// yet), or to add a recovery wrap to the same key. Never replaces a key: that would make
/// the user's sealed disks unreadable (an administrator's `passwd --discard-data` does
/// that deliberately).
fn set_key(state: &State, user: &str, body: &[u8]) -> Reply {
    let body: SetKeyRequest = match parse_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (_guard, mut rec) = match record_for_key_change(state, user, &body.key) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let acceptable = match &rec.data_key {
        None => true,
        Some(old) => {
            old.key_id == body.key.key_id
                && old.password == body.key.password
                && old.recovery.is_none()
                && body.key.recovery.is_some()
        }
    };
    if !acceptable {
        return Reply::err(409, "conflict", format!("{user} has a data key already; it is changed only with the password (POST {PASSWORD_PATH})"));
    }
    rec.format = appliance::user::USER_RECORD_FORMAT;
    rec.data_key = Some(body.key);
    if let Err(e) = state.repo.update_user(&rec) {
        return internal(e);
    }
    // The verifier is unchanged, so this session (bound to it) stays valid.
    log::info!("{user}: data key stored");
    Reply::Empty(204)
}

/// The user's own password change: the old password is checked like a login (and counted
/// as one), the same data key comes wrapped with the new password.
fn change_password(state: &State, user: &str, body: &[u8], peer: SocketAddr) -> Reply {
    let body: ChangePasswordRequest = match parse_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let client = peer.ip();
    if let Some(wait) = state.limiter.wait(user, client) {
        let secs = wait.as_secs() + 1;
        let mut e = ApiError::new(
            "rate_limited",
            format!("too many failed attempts: wait {secs} s"),
        );
        e.retry_after_secs = Some(secs);
        return Reply::Error(429, e);
    }
    if body.new_password.is_empty() {
        return Reply::err(400, "bad_request", "the new password must not be empty");
    }
    let (_guard, mut rec) = match record_for_key_change(state, user, &body.key) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match verify_password(&rec.verifier, &body.old_password) {
        Ok(()) => state.limiter.succeeded(user, client),
        Err(appliance::Error::WrongPassword) => {
            state.limiter.failed(user, client);
            return Reply::err(
                401,
                "bad_credentials",
                "the current password is wrong; nothing changed",
            );
        }
        Err(e) => return internal(format!("the record of user {user} is unusable: {e}")),
    }
    if let Some(old) = &rec.data_key {
        if old.key_id != body.key.key_id || old.recovery != body.key.recovery {
            return Reply::err(
                400,
                "bad_request",
                "the new wrap must hold the same data key and keep its recovery wrap",
            );
        }
    }
    let verifier =
        match kdf_params_of(&rec.verifier).and_then(|p| hash_password(&body.new_password, p)) {
            Ok(v) => v,
            Err(e) => return internal(e),
        };
    rec.format = appliance::user::USER_RECORD_FORMAT;
    rec.verifier = verifier;
    rec.data_key = Some(body.key);
    if let Err(e) = state.repo.update_user(&rec) {
        return internal(e);
    }
    log::info!("{user} changed their password from {peer}; their sessions end");
    Reply::Empty(204)
}

fn missing(state: &State, body: &[u8]) -> Reply {
    let body: MissingChunksRequest = match parse_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.ids.len() > MAX_MISSING_IDS {
        return Reply::err(
            413,
            "too_large",
            format!("ask about at most {MAX_MISSING_IDS} chunks per request"),
        );
    }
    Reply::json(
        200,
        &MissingChunksResponse {
            missing: body
                .ids
                .into_iter()
                .filter(|id| !state.repo.has_chunk(id))
                .collect(),
        },
    )
}

/// The reply for a user over their quota: what happened and what to do.
fn over_quota(user: &str, would: u64, quota: u64, what: &str) -> Reply {
    Reply::err(
        413,
        "quota_exceeded",
        format!(
            "{what}: user {user}'s disks would hold {} ({would} bytes) in the repository, over the {} ({quota} bytes) quota; delete files on the user disk (or ask the administrator for a larger quota), then log out again: the changes stay on this terminal until then",
            support::size::human(would),
            support::size::human(quota)
        ),
    )
}

fn upload_chunk(state: &State, user: &str, body: &[u8], id: &str) -> Reply {
    let id: ChunkId = match id.parse() {
        Ok(id) => id,
        Err(e) => return Reply::err(400, "bad_request", format!("{e}")),
    };
    if let Err(e) = check_stored(&id, body) {
        return Reply::err(400, "chunk_mismatch", format!("chunk {id} rejected: {e}"));
    }
    match state.repo.touch_chunk(&id) {
        Ok(true) => return Reply::Empty(200),
        Ok(false) => {}
        Err(e) => return internal(e),
    }
    if let Some(quota) = state.limits.user_quota {
        // What the user holds (computed once per round of uploads, not per chunk) plus the
        // new bytes sent since the last commit.
        let known = state
            .uploaded
            .lock()
            .ok()
            .and_then(|u| u.get(user).copied());
        if known.is_none() {
            let held = match state.repo.user_disks_of(user) {
                Ok(disks) => {
                    let ids: std::collections::HashSet<ChunkId> = disks
                        .iter()
                        .flat_map(|m| m.image.distinct_chunks())
                        .collect();
                    state.repo.stored_bytes(&ids)
                }
                Err(e) => return internal(e),
            };
            if let Ok(mut up) = state.uploaded.lock() {
                up.entry(user.to_owned()).or_insert((held, 0));
            }
        }
        let Ok(mut up) = state.uploaded.lock() else {
            return internal("the upload counter is poisoned");
        };
        let (held, sent) = up.entry(user.to_owned()).or_default();
        let would = *held + *sent + body.len() as u64;
        if would > quota {
            return over_quota(user, would, quota, "chunk upload refused");
        }
        *sent += body.len() as u64;
    }
    match state.repo.put_encoded_chunk(&id, body) {
        Ok(()) => Reply::Empty(201),
        Err(e) => internal(e),
    }
}

fn get_user_disk(state: &State, user: &str, app: &str, disk: &str) -> Reply {
    match state.repo.user_disk(user, app, disk) {
        Ok(Some(m)) => Reply::json(200, &m),
        Ok(None) => Reply::err(404, "no_user_disk", format!("user {user} has no committed {app}/{disk}: start from the appliance's initial content")),
        Err(e) => internal(e),
    }
}

fn commit_user_disk(state: &State, body: &[u8], user: &str, app: &str, disk: &str) -> Reply {
    let body: CommitUserDiskRequest = match parse_json(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let m = &body.manifest;
    if let Err(e) = m.validate() {
        return Reply::err(
            400,
            "bad_request",
            format!("the user-disk manifest is invalid: {e}"),
        );
    }
    if !m.is_sealed() {
        return Reply::err(
            400,
            "unsealed",
            "this repository keeps user data sealed only, and this manifest lists unsealed chunks: update the terminal's firmware; the changes stay on the terminal until then",
        );
    }
    if m.user != user || m.appliance != app || m.disk != disk {
        return Reply::err(
            403,
            "bad_request",
            format!(
                "the manifest is for {}/{}/{}, but this session and path are {user}/{app}/{disk}",
                m.user, m.appliance, m.disk
            ),
        );
    }
    if m.version != body.expected_version + 1 {
        return Reply::err(
            400,
            "bad_request",
            format!(
                "the new version must be expected_version + 1 = {}, not {}",
                body.expected_version + 1,
                m.version
            ),
        );
    }
    match state.repo.user(user) {
        Ok(Some(rec)) if rec.appliances.iter().any(|a| a == app) => {
            let current_key = rec.data_key.as_ref().map(|k| k.key_id.as_str());
            let sealed_with = m.sealed.as_ref().map(|s| s.key_id.as_str());
            if current_key != sealed_with {
                return Reply::err(
                    409,
                    "stale_key",
                    format!("{app}/{disk} was sealed with another data key than {user}'s current one (the key was reset): log in again; the changes stay on this terminal"),
                );
            }
        }
        Ok(_) => {
            return Reply::err(
                403,
                "bad_request",
                format!("{app} is not in {user}'s appliance set"),
            )
        }
        Err(e) => return internal(e),
    }
    let _guard = match state.commit_lock.lock() {
        Ok(g) => g,
        Err(_) => return internal("the commit lock is poisoned"),
    };
    let current = match state.repo.user_disk(user, app, disk) {
        Ok(cur) => cur.map(|c| c.version).unwrap_or(0),
        Err(e) => return internal(e),
    };
    if current != body.expected_version {
        let mut e = ApiError::new(
            "conflict",
            format!("{app}/{disk} of {user} is at version {current}, not {}: another terminal committed first; keep the local data and resolve", body.expected_version),
        );
        e.current_version = Some(current);
        return Reply::Error(409, e);
    }
    // Every chunk must be there, and touched so that a concurrent gc keeps it.
    let mut absent = Vec::new();
    for id in m.image.distinct_chunks() {
        match state.repo.touch_chunk(&id) {
            Ok(true) => {}
            Ok(false) => absent.push(id),
            Err(e) => return internal(e),
        }
    }
    if !absent.is_empty() {
        let mut e = ApiError::new("missing_chunks", format!("{} chunk(s) of the new user disk were not uploaded: upload them, then commit again", absent.len()));
        e.missing = absent;
        return Reply::Error(400, e);
    }
    if let Some(quota) = state.limits.user_quota {
        let others = match state.repo.user_disks_of(user) {
            Ok(d) => d,
            Err(e) => return internal(e),
        };
        let ids: std::collections::HashSet<ChunkId> = others
            .iter()
            .filter(|o| !(o.appliance == app && o.disk == disk))
            .flat_map(|o| o.image.distinct_chunks())
            .chain(m.image.distinct_chunks())
            .collect();
        let would = state.repo.stored_bytes(&ids);
        if would > quota {
            return over_quota(
                user,
                would,
                quota,
                &format!("commit of {app}/{disk} refused"),
            );
        }
    }
    if let Err(e) = state
        .repo
        .sync_chunk_dirs()
        .and_then(|()| state.repo.write_user_disk(m))
    {
        return internal(e);
    }
    if let Ok(mut up) = state.uploaded.lock() {
        up.remove(user);
    }
    log::info!("user disk {user}/{app}/{disk} now at version {}", m.version);
    Reply::json(200, &CommitUserDiskResponse { version: m.version })
}
