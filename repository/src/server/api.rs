//! The JSON API (`/api/v1/...`): login, logout, chunk upload, user-disk read and commit.
//! Types and paths are in `appliance::wire`.

use std::io::Read;

use appliance::chunk::{decode_chunk, CHUNK_HEADER_LEN, MAX_CHUNK_SIZE};
use appliance::names::validate_name;
use appliance::user::{hash_password, kdf_params_of, verify_password};
use appliance::wire::*;
use appliance::{ChunkId, DiskRole, SignedManifest};
use sha2::{Digest, Sha256};
use tiny_http::Request;

use super::{Reply, State};

/// Largest JSON body accepted (a user-disk manifest of a 64 GiB disk at 64 KiB chunks is
/// about 70 MB of JSON; larger disks need larger chunks).
const MAX_JSON: usize = 96 << 20;
/// Largest chunk upload.
const MAX_CHUNK_UPLOAD: usize = MAX_CHUNK_SIZE + CHUNK_HEADER_LEN + 64 * 1024;

pub(super) fn route(
    state: &State,
    req: &mut Request,
    method: &str,
    path: &str,
    peer: &str,
) -> Reply {
    if (method, path) == ("POST", LOGIN_PATH) {
        return login(state, req, peer);
    }
    let known = matches!(
        (method, path),
        ("POST", LOGOUT_PATH) | ("POST", MISSING_CHUNKS_PATH)
    ) || (method == "PUT" && path.starts_with(CHUNK_UPLOAD_PREFIX))
        || (matches!(method, "GET" | "PUT") && path.starts_with(USER_DISK_PREFIX));
    if !known {
        return Reply::err(404, "not_found", format!("{method} {path} is not an API endpoint of this repository (API version {API_FORMAT})"));
    }
    let (user, token) = match authenticate(state, req) {
        Ok(ut) => ut,
        Err(r) => return r,
    };
    match (method, path) {
        ("POST", LOGOUT_PATH) => {
            state.sessions.remove(&token);
            Reply::Empty(204)
        }
        ("POST", MISSING_CHUNKS_PATH) => missing(state, req),
        ("PUT", p) if p.starts_with(CHUNK_UPLOAD_PREFIX) => {
            upload_chunk(state, req, &p[CHUNK_UPLOAD_PREFIX.len()..])
        }
        (m, p) => {
            let rest = &p[USER_DISK_PREFIX.len()..];
            let Some((app, disk)) = rest.split_once('/') else {
                return Reply::err(
                    404,
                    "not_found",
                    format!("{p}: expected {USER_DISK_PREFIX}<appliance>/<disk>"),
                );
            };
            if validate_name("appliance name", app).is_err()
                || validate_name("disk name", disk).is_err()
            {
                return Reply::err(404, "not_found", format!("{p}: no such appliance or disk"));
            }
            if m == "GET" {
                get_user_disk(state, &user, app, disk)
            } else {
                commit_user_disk(state, req, &user, app, disk)
            }
        }
    }
}

fn bearer(req: &Request) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| {
            h.value
                .as_str()
                .strip_prefix("Bearer ")
                .map(|t| t.trim().to_owned())
        })
}

fn authenticate(state: &State, req: &Request) -> Result<(String, String), Reply> {
    match bearer(req) {
        Some(token) => match state.sessions.user(&token) {
            Some(user) => Ok((user, token)),
            None => Err(Reply::err(
                401,
                "unauthorized",
                "the session token is unknown or expired: log in again",
            )),
        },
        None => Err(Reply::err(
            401,
            "unauthorized",
            "this call needs `Authorization: Bearer <token>` from a login",
        )),
    }
}

fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, Reply> {
    if req.body_length().is_some_and(|n| n > limit) {
        return Err(Reply::err(
            413,
            "too_large",
            format!("the body is larger than the {limit}-byte limit"),
        ));
    }
    let mut body = Vec::new();
    match req
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(_) if body.len() > limit => Err(Reply::err(
            413,
            "too_large",
            format!("the body is larger than the {limit}-byte limit"),
        )),
        Ok(_) => Ok(body),
        Err(e) => Err(Reply::err(
            400,
            "bad_request",
            format!("cannot read the request body: {e}"),
        )),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(req: &mut Request, limit: usize) -> Result<T, Reply> {
    let body = read_body(req, limit)?;
    serde_json::from_slice(&body).map_err(|e| {
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

fn login(state: &State, req: &mut Request, peer: &str) -> Reply {
    let body: LoginRequest = match parse_json(req, 64 * 1024) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ip = peer.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(peer);
    let keys = vec![format!("user:{}", body.user), format!("ip:{ip}")];
    if let Some(wait) = state.limiter.check(&keys) {
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
            state.limiter.fail(&keys);
            log::info!("failed login for {:?} from {peer}", body.user);
            return Reply::err(401, "bad_credentials", "wrong user name or password");
        }
        (Err(e), _) => {
            return internal(format!("the record of user {} is unusable: {e}", body.user))
        }
    };
    state.limiter.succeed(&keys);

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
    let offline_verifier =
        match kdf_params_of(&rec.verifier).and_then(|p| hash_password(&body.password, p)) {
            Ok(v) => v,
            Err(e) => return internal(e),
        };
    let token = state.sessions.create(&rec.name);
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
        },
    )
}

fn missing(state: &State, req: &mut Request) -> Reply {
    let body: MissingChunksRequest = match parse_json(req, 8 << 20) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.ids.len() > 65536 {
        return Reply::err(
            413,
            "too_large",
            "ask about at most 65536 chunks per request",
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

fn upload_chunk(state: &State, req: &mut Request, id: &str) -> Reply {
    let id: ChunkId = match id.parse() {
        Ok(id) => id,
        Err(e) => return Reply::err(400, "bad_request", format!("{e}")),
    };
    let body = match read_body(req, MAX_CHUNK_UPLOAD) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(e) = decode_chunk(&id, &body) {
        return Reply::err(400, "chunk_mismatch", format!("chunk {id} rejected: {e}"));
    }
    match state.repo.touch_chunk(&id) {
        Ok(true) => return Reply::Empty(200),
        Ok(false) => {}
        Err(e) => return internal(e),
    }
    match state.repo.put_encoded_chunk(&id, &body) {
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

fn commit_user_disk(state: &State, req: &mut Request, user: &str, app: &str, disk: &str) -> Reply {
    let body: CommitUserDiskRequest = match parse_json(req, MAX_JSON) {
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
        Ok(Some(rec)) if rec.appliances.iter().any(|a| a == app) => {}
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
    if let Err(e) = state
        .repo
        .sync_chunk_dirs()
        .and_then(|()| state.repo.write_user_disk(m))
    {
        return internal(e);
    }
    log::info!("user disk {user}/{app}/{disk} now at version {}", m.version);
    Reply::json(200, &CommitUserDiskResponse { version: m.version })
}
