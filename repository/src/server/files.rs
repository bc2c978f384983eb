//! Static immutable content: exactly the two path shapes of `appliance::wire`, mapped onto
//! `public/`. Everything else is 404, so no request can reach outside `public/`.
//!
//! These are plain files on purpose: nginx, an object store or a CDN can serve the same
//! tree, and this server does nothing with them that those could not.

use std::path::PathBuf;

use appliance::names::validate_name;
use appliance::ChunkId;

use super::Reply;
use crate::store::Repo;

/// The file behind `path` and its content type, or the 404 to send.
pub(crate) fn resolve(repo: &Repo, path: &str) -> Result<(PathBuf, &'static str), Reply> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["chunks", prefix, id] => match id.parse::<ChunkId>() {
            Ok(id) if id.to_hex()[..2] == **prefix => {
                Ok((repo.chunk_file(&id), "application/octet-stream"))
            }
            _ => Err(not_found(path)),
        },
        ["manifests", name, file] => {
            let version = file
                .strip_suffix(".json")
                .and_then(|v| v.parse::<u64>().ok());
            match version {
                Some(v) if validate_name("appliance name", name).is_ok() => {
                    Ok((repo.manifest_file(name, v), "application/json"))
                }
                _ => Err(not_found(path)),
            }
        }
        _ => Err(not_found(path)),
    }
}

pub(crate) fn not_found(path: &str) -> Reply {
    Reply::err(
        404,
        "not_found",
        format!("{path} is not in this repository"),
    )
}
