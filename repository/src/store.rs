//! The repository on disk: where everything lives and the primitive operations on it.
//!
//! ```text
//! DIR/repository.json                       {"format":2,"kind":"collective-repository"}
//! DIR/public/                               the static root: serve it with any HTTP server
//!   chunks/<2 hex>/<64 hex>                 stored chunks (immutable)
//!   manifests/<appliance>/<version>.json    signed manifests (immutable)
//! DIR/private/                              never served as files
//!   users/<name>.json                       user records (argon2id verifiers, wrapped data keys, appliance set)
//!   recovery.pub                            the organisation's recovery public key (optional)
//!   userdisks/<user>/<appliance>/<disk>.json  current user-disk manifests
//!   tmp/                                    temporary files, moved into place when complete
//! DIR/logs/access.log                       the server's access log (default)
//! ```

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use appliance::chunk::encode_chunk;
use appliance::names::validate_name;
use appliance::wire::{chunk_path, manifest_path};
use appliance::{ChunkId, RecoveryPublicKey, UserDiskManifest, UserRecord};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{self, io_context};

/// Version of the repository's on-disk layout. 2: users have wrapped data keys and user
/// disks are committed sealed (format 1 kept them in the clear); see [`Repo::upgrade`].
pub const REPOSITORY_FORMAT: u32 = 2;

#[derive(Serialize, Deserialize)]
struct RepoInfo {
    format: u32,
    kind: String,
}

/// What storing one chunk did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// It was new; this many bytes were written (encoded size).
    New(u64),
    /// It was already there (its mtime was refreshed for `gc`).
    Existing,
}

/// An opened repository.
#[derive(Clone, Debug)]
pub struct Repo {
    root: PathBuf,
}

impl Repo {
    /// Creates the layout in `dir` (which may exist but must not be a repository yet).
    pub fn init(dir: &Path) -> Result<Repo> {
        let info = dir.join("repository.json");
        if info.exists() {
            return Err(Error::Usage(format!(
                "{} is already a repository; nothing to do",
                dir.display()
            )));
        }
        let repo = Repo {
            root: dir.to_path_buf(),
        };
        for d in [
            repo.public().join("chunks"),
            repo.public().join("manifests"),
            repo.private().join("users"),
            repo.private().join("userdisks"),
            repo.tmp_dir(),
            dir.join("logs"),
        ] {
            fsutil::create_dir_all(&d)?;
        }
        let text = serde_json::to_vec_pretty(&RepoInfo {
            format: REPOSITORY_FORMAT,
            kind: "collective-repository".into(),
        })
        .map_err(|e| Error::Usage(e.to_string()))?;
        fsutil::write_new(&repo.tmp_dir(), &info, &text)?;
        Ok(repo)
    }

    /// Opens an existing repository, refusing unknown layouts.
    pub fn open(dir: &Path) -> Result<Repo> {
        let info = dir.join("repository.json");
        let text = match fs::read(&info) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotARepository(dir.to_path_buf()))
            }
            Err(e) => return Err(io_context("reading", &info, e)),
        };
        let parsed: RepoInfo = serde_json::from_slice(&text)
            .map_err(|e| Error::Usage(format!("{} is damaged: {e}", info.display())))?;
        if parsed.format == 1 && parsed.kind == "collective-repository" {
            return Err(Error::Usage(format!(
                "{} has layout format 1, from before user data was sealed: its user disks are stored in the clear. Run `collective-repo upgrade {}` once (it lists what is still unsealed; each user's data is sealed at their next logout), then start again",
                dir.display(),
                dir.display()
            )));
        }
        if parsed.format != REPOSITORY_FORMAT || parsed.kind != "collective-repository" {
            return Err(Error::Usage(format!(
                "{} has layout format {} (this program knows {REPOSITORY_FORMAT}); use a matching collective-repo",
                dir.display(),
                parsed.format
            )));
        }
        Ok(Repo {
            root: dir.to_path_buf(),
        })
    }

    /// Moves a layout-1 repository to layout 2 and reports what is still in the clear.
    ///
    /// Nothing can be sealed here: sealing needs each user's data key, which only their
    /// password opens. So the upgrade only changes the layout's version; from then on the
    /// server refuses unsealed commits, a user without a data key gets one from their
    /// terminal at the next login, and that terminal's next write-back seals the whole
    /// disk (its first write-back uploads every chunk once). The old plaintext chunks are
    /// no longer referenced after that and `gc` removes them. Returns the users without a
    /// key and the user disks still committed in the clear.
    pub fn upgrade(dir: &Path) -> Result<(Repo, Vec<String>, Vec<String>)> {
        let info = dir.join("repository.json");
        let text = fs::read(&info).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotARepository(dir.to_path_buf()),
            _ => io_context("reading", &info, e),
        })?;
        let parsed: RepoInfo = serde_json::from_slice(&text)
            .map_err(|e| Error::Usage(format!("{} is damaged: {e}", info.display())))?;
        let repo = Repo {
            root: dir.to_path_buf(),
        };
        if parsed.format == 1 {
            let text = serde_json::to_vec_pretty(&RepoInfo {
                format: REPOSITORY_FORMAT,
                kind: parsed.kind,
            })
            .map_err(|e| Error::Usage(e.to_string()))?;
            fsutil::write_replace(&repo.tmp_dir(), &info, &text)?;
        }
        let repo = Repo::open(dir)?;
        let (keyless, unsealed) = repo.unsealed()?;
        Ok((repo, keyless, unsealed))
    }

    /// Users without a data key, and user disks (`user/appliance/disk`) still committed in
    /// the clear: what a layout-1 repository has left to seal.
    pub fn unsealed(&self) -> Result<(Vec<String>, Vec<String>)> {
        let mut keyless = Vec::new();
        for u in self.user_names()? {
            if self.user(&u)?.is_some_and(|r| r.data_key.is_none()) {
                keyless.push(u);
            }
        }
        let mut unsealed = Vec::new();
        for u in self.user_names()? {
            for m in self.user_disks_of(&u)? {
                if !m.is_sealed() {
                    unsealed.push(format!("{}/{}/{}", m.user, m.appliance, m.disk));
                }
            }
        }
        Ok((keyless, unsealed))
    }

    // ---- the organisation's recovery key ----

    fn recovery_file(&self) -> PathBuf {
        self.private().join("recovery.pub")
    }

    /// The organisation's recovery public key, if one was installed.
    pub fn recovery_key(&self) -> Result<Option<RecoveryPublicKey>> {
        let path = self.recovery_file();
        match fs::read_to_string(&path) {
            Ok(t) => Ok(Some(RecoveryPublicKey::parse(&t).map_err(|e| {
                Error::Usage(format!("{} is damaged: {e}", path.display()))
            })?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_context("reading", &path, e)),
        }
    }

    /// Installs (or replaces) the recovery public key. Data keys made from now on are
    /// sealed to it too; existing ones keep the wrap they have.
    pub fn set_recovery_key(&self, key: &RecoveryPublicKey) -> Result<()> {
        let text = format!(
            "# the organisation's recovery key (collective-repo recovery install)\n{key}\n"
        );
        fsutil::write_replace(&self.tmp_dir(), &self.recovery_file(), text.as_bytes())
    }

    /// Removes every committed user disk of `user` (their chunks are left to `gc`).
    /// Returns how many there were.
    pub fn remove_user_disks(&self, user: &str) -> Result<usize> {
        validate_name("user name", user)?;
        let dir = self.private().join("userdisks").join(user);
        let mut files = Vec::new();
        walk_json(&dir, &mut files)?;
        for f in &files {
            fs::remove_file(f).map_err(|e| io_context("removing", f, e))?;
            fsutil::fsync_parent(f)?;
        }
        Ok(files.len())
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The static root (`public/`).
    pub fn public(&self) -> PathBuf {
        self.root.join("public")
    }
    /// Private data (`private/`).
    pub fn private(&self) -> PathBuf {
        self.root.join("private")
    }
    /// Temporary files.
    pub fn tmp_dir(&self) -> PathBuf {
        self.private().join("tmp")
    }
    /// Default access log path.
    pub fn default_access_log(&self) -> PathBuf {
        self.root.join("logs").join("access.log")
    }

    // ---- chunks ----

    /// Where chunk `id` is stored.
    pub fn chunk_file(&self, id: &ChunkId) -> PathBuf {
        self.public().join(chunk_path(id))
    }

    /// True if chunk `id` is stored.
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.chunk_file(id).is_file()
    }

    /// Refreshes a stored chunk's mtime, which tells a concurrent `gc` that it is in use.
    /// `Ok(false)` if the chunk is not (or no longer) there.
    pub fn touch_chunk(&self, id: &ChunkId) -> Result<bool> {
        let path = self.chunk_file(id);
        match OpenOptions::new().append(true).open(&path) {
            Ok(f) => {
                f.set_modified(SystemTime::now())
                    .map_err(|e| io_context("refreshing", &path, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_context("opening", &path, e)),
        }
    }

    /// Stores the plaintext chunk `data` under `id` (which the caller computed) unless it is
    /// there already. Durable except for the directory entry: call [`Repo::sync_chunk_dirs`]
    /// before publishing anything that refers to it.
    pub fn put_chunk(&self, id: &ChunkId, data: &[u8]) -> Result<Stored> {
        if self.touch_chunk(id)? {
            return Ok(Stored::Existing);
        }
        let encoded = encode_chunk(data);
        self.put_encoded_chunk(id, &encoded)?;
        Ok(Stored::New(encoded.len() as u64))
    }

    /// Stores an already-encoded chunk (the caller verified it decodes to `id`).
    pub fn put_encoded_chunk(&self, id: &ChunkId, encoded: &[u8]) -> Result<()> {
        let dest = self.chunk_file(id);
        if let Some(dir) = dest.parent() {
            if !dir.is_dir() {
                fsutil::create_dir_all(dir)?;
            }
        }
        fsutil::write_replace_nodirsync(&self.tmp_dir(), &dest, encoded)
    }

    /// fsyncs the chunk directories (and `chunks/` itself) so every stored chunk's name is
    /// durable. Cheap enough to call once per publish or commit: at most 257 directories.
    pub fn sync_chunk_dirs(&self) -> Result<()> {
        let chunks = self.public().join("chunks");
        for entry in fs::read_dir(&chunks).map_err(|e| io_context("listing", &chunks, e))? {
            let entry = entry.map_err(|e| io_context("listing", &chunks, e))?;
            if entry.path().is_dir() {
                fsutil::fsync_dir(&entry.path())?;
            }
        }
        fsutil::fsync_dir(&chunks)
    }

    /// Every stored chunk with its path.
    pub fn list_chunks(&self) -> Result<Vec<(ChunkId, PathBuf)>> {
        let chunks = self.public().join("chunks");
        let mut out = Vec::new();
        for sub in fs::read_dir(&chunks).map_err(|e| io_context("listing", &chunks, e))? {
            let sub = sub.map_err(|e| io_context("listing", &chunks, e))?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in fs::read_dir(&sub).map_err(|e| io_context("listing", &sub, e))? {
                let path = f.map_err(|e| io_context("listing", &sub, e))?.path();
                if let Some(id) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<ChunkId>().ok())
                {
                    out.push((id, path));
                }
            }
        }
        Ok(out)
    }

    // ---- manifests ----

    /// Where a signed manifest is stored.
    pub fn manifest_file(&self, appliance: &str, version: u64) -> PathBuf {
        self.public().join(manifest_path(appliance, version))
    }

    /// Published versions of every appliance, ascending.
    pub fn appliances(&self) -> Result<BTreeMap<String, Vec<u64>>> {
        let dir = self.public().join("manifests");
        let mut out = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_context("listing", &dir, e))? {
            let entry = entry.map_err(|e| io_context("listing", &dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_name("appliance name", &name).is_err() {
                continue;
            }
            out.insert(name.clone(), self.versions(&name)?);
        }
        Ok(out)
    }

    /// Published versions of `appliance`, ascending (empty if none).
    pub fn versions(&self, appliance: &str) -> Result<Vec<u64>> {
        validate_name("appliance name", appliance)?;
        let dir = self.public().join("manifests").join(appliance);
        let mut versions = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(versions),
            Err(e) => return Err(io_context("listing", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_context("listing", &dir, e))?;
            if let Some(v) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                versions.push(v);
            }
        }
        versions.sort_unstable();
        Ok(versions)
    }

    /// The latest version of `appliance`, if any.
    pub fn latest(&self, appliance: &str) -> Result<Option<u64>> {
        Ok(self.versions(appliance)?.last().copied())
    }

    // ---- users ----

    /// Where a user's record lives (the server watches it to end sessions when it changes).
    pub(crate) fn user_file(&self, name: &str) -> Result<PathBuf> {
        validate_name("user name", name)?;
        Ok(self.private().join("users").join(format!("{name}.json")))
    }

    /// Reads a user record; `Ok(None)` if there is no such user.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        let path = self.user_file(name)?;
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_context("reading", &path, e)),
        };
        let rec: UserRecord = serde_json::from_slice(&text)
            .map_err(|e| Error::Usage(format!("{} is damaged: {e}", path.display())))?;
        rec.validate()?;
        Ok(Some(rec))
    }

    /// Creates a user record; fails if the user exists.
    pub fn create_user(&self, rec: &UserRecord) -> Result<()> {
        rec.validate()?;
        let path = self.user_file(&rec.name)?;
        if !fsutil::write_new(&self.tmp_dir(), &path, &to_json(rec)?)? {
            return Err(Error::User(format!(
                "user {} exists already: use `collective-repo user passwd {}` to change the password, or pick another name",
                rec.name, rec.name
            )));
        }
        Ok(())
    }

    /// Replaces an existing user record.
    pub fn update_user(&self, rec: &UserRecord) -> Result<()> {
        rec.validate()?;
        let path = self.user_file(&rec.name)?;
        fsutil::write_replace(&self.tmp_dir(), &path, &to_json(rec)?)
    }

    /// Removes a user record. Their user disks are kept (deleting data is a separate,
    /// deliberate step: remove `private/userdisks/<name>/`). `Ok(false)` if there was no
    /// such user.
    pub fn remove_user(&self, name: &str) -> Result<bool> {
        let path = self.user_file(name)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                fsutil::fsync_parent(&path)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_context("removing", &path, e)),
        }
    }

    /// All user names, sorted.
    pub fn user_names(&self) -> Result<Vec<String>> {
        let dir = self.private().join("users");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_context("listing", &dir, e))? {
            let entry = entry.map_err(|e| io_context("listing", &dir, e))?;
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
            {
                out.push(n.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    // ---- user disks ----

    /// Where a user disk's current manifest lives.
    pub fn user_disk_file(&self, user: &str, appliance: &str, disk: &str) -> Result<PathBuf> {
        validate_name("user name", user)?;
        validate_name("appliance name", appliance)?;
        validate_name("disk name", disk)?;
        Ok(self
            .private()
            .join("userdisks")
            .join(user)
            .join(appliance)
            .join(format!("{disk}.json")))
    }

    /// The current manifest of a user disk, if one was ever committed.
    pub fn user_disk(
        &self,
        user: &str,
        appliance: &str,
        disk: &str,
    ) -> Result<Option<UserDiskManifest>> {
        let path = self.user_disk_file(user, appliance, disk)?;
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_context("reading", &path, e)),
        };
        let m: UserDiskManifest = serde_json::from_slice(&text)
            .map_err(|e| Error::Usage(format!("{} is damaged: {e}", path.display())))?;
        m.validate()?;
        Ok(Some(m))
    }

    /// Writes a user disk's manifest (the caller did the compare-and-swap check). Compact
    /// JSON: a large disk's list is one line of ids, not one indented line per chunk.
    pub fn write_user_disk(&self, m: &UserDiskManifest) -> Result<()> {
        let path = self.user_disk_file(&m.user, &m.appliance, &m.disk)?;
        if let Some(dir) = path.parent() {
            fsutil::create_dir_all(dir)?;
        }
        let mut text =
            serde_json::to_vec(m).map_err(|e| Error::Usage(format!("cannot encode: {e}")))?;
        text.push(b'\n');
        fsutil::write_replace(&self.tmp_dir(), &path, &text)
    }

    /// The committed user disks of `user`, every appliance and disk.
    pub fn user_disks_of(&self, user: &str) -> Result<Vec<UserDiskManifest>> {
        validate_name("user name", user)?;
        let mut files = Vec::new();
        walk_json(&self.private().join("userdisks").join(user), &mut files)?;
        let mut out = Vec::new();
        for path in files {
            let text = fs::read(&path).map_err(|e| io_context("reading", &path, e))?;
            let m: UserDiskManifest = serde_json::from_slice(&text)
                .map_err(|e| Error::Usage(format!("{} is damaged: {e}", path.display())))?;
            out.push(m);
        }
        Ok(out)
    }

    /// Bytes the chunks `ids` take as stored (absent ones count nothing).
    pub fn stored_bytes<'a>(&self, ids: impl IntoIterator<Item = &'a ChunkId>) -> u64 {
        ids.into_iter()
            .filter_map(|id| fs::metadata(self.chunk_file(id)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Every committed user-disk manifest file.
    pub fn user_disk_files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        walk_json(&self.private().join("userdisks"), &mut out)?;
        Ok(out)
    }
}

fn walk_json(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_context("listing", dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| io_context("listing", dir, e))?.path();
        if path.is_dir() {
            walk_json(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "json") {
            out.push(path);
        }
    }
    Ok(())
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut text =
        serde_json::to_vec_pretty(v).map_err(|e| Error::Usage(format!("cannot encode: {e}")))?;
    text.push(b'\n');
    Ok(text)
}
