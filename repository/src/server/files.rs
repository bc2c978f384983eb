//! Static immutable content: exactly the two path shapes of `appliance::wire`, mapped onto
//! `public/`. Everything else is 404, so no request can reach outside `public/`.

use appliance::names::validate_name;
use appliance::ChunkId;

use super::Reply;
use crate::store::Repo;

pub(crate) fn serve(repo: &Repo, path: &str) -> Reply {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (file, ctype) = match parts.as_slice() {
        ["chunks", prefix, id] => match id.parse::<ChunkId>() {
            Ok(id) if id.to_hex()[..2] == **prefix => {
                (repo.chunk_file(&id), "application/octet-stream")
            }
            _ => return not_found(path),
        },
        ["manifests", name, file] => {
            let version = file
                .strip_suffix(".json")
                .and_then(|v| v.parse::<u64>().ok());
            match version {
                Some(v) if validate_name("appliance name", name).is_ok() => {
                    (repo.manifest_file(name, v), "application/json")
                }
                _ => return not_found(path),
            }
        }
        _ => return not_found(path),
    };
    match std::fs::File::open(&file).and_then(|f| f.metadata().map(|m| (f, m.len()))) {
        Ok((f, len)) => Reply::File(f, len, ctype),
        Err(_) => not_found(path),
    }
}

fn not_found(path: &str) -> Reply {
    Reply::err(
        404,
        "not_found",
        format!("{path} is not in this repository"),
    )
}
