//! `collective-repo verify`: checks a repository the way a terminal would, so an operator
//! finds a tampered manifest or a rotten chunk before users do.

use std::fs;

use appliance::{check_stored, PublicKey, SignedManifest};

use crate::error::Result;
use crate::fsutil::io_context;
use crate::store::Repo;

/// What verification found. Every problem is one line that says what to do.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Manifests checked.
    pub manifests: u64,
    /// Chunks checked (decoded and hashed).
    pub chunks: u64,
    /// Problems found.
    pub problems: Vec<String>,
}

/// Verifies every manifest's signature against `trusted` (skipped if empty), that every
/// referenced chunk exists, and, with `check_chunks`, that every stored chunk decodes to
/// its id (a sealed user chunk: that its bytes hash to its id; the key is not here).
pub fn verify(repo: &Repo, trusted: &[PublicKey], check_chunks: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    for (name, versions) in repo.appliances()? {
        for v in versions {
            report.manifests += 1;
            let path = repo.manifest_file(&name, v);
            let bytes = fs::read(&path).map_err(|e| io_context("reading", &path, e))?;
            let manifest = if trusted.is_empty() {
                serde_json::from_slice::<SignedManifest>(&bytes)
                    .map(|s| s.manifest)
                    .map_err(|e| e.to_string())
            } else {
                SignedManifest::verify_bytes(&bytes, trusted).map_err(|e| e.to_string())
            };
            match manifest {
                Err(e) => report.problems.push(format!("{name} version {v} ({}): {e}; publish the appliance again from trusted inputs and remove this file", path.display())),
                Ok(m) => {
                    let missing = m.all_chunks().into_iter().filter(|id| !repo.has_chunk(id)).count();
                    if missing > 0 {
                        report.problems.push(format!("{name} version {v}: {missing} referenced chunk(s) are missing; publish the same images again to restore them"));
                    }
                }
            }
        }
    }
    if check_chunks {
        for (id, path) in repo.list_chunks()? {
            report.chunks += 1;
            let bytes = fs::read(&path).map_err(|e| io_context("reading", &path, e))?;
            if let Err(e) = check_stored(&id, &bytes) {
                report.problems.push(format!(
                    "{}: {e}; delete it and publish the images that contain it again",
                    path.display()
                ));
            }
        }
    }
    Ok(report)
}
