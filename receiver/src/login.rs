//! Logging a user in: online against the repository, or offline against the record the
//! last online login left in the cache.
//!
//! Online: the repository checks the password and hands out the appliance set; every
//! manifest is fetched and verified, user-disk states are read, the set is pinned and the
//! offline record replaced. If the repository cannot be reached (connect, TLS, timeout, a
//! 5xx), or turns the login away for now (busy beyond a short patience, or the failed-login
//! limit) and this user has an offline record here, the login falls back to the offline
//! record: the password must open the saved wrapped data key (older records: match the
//! saved verifier), and the saved manifests are verified again against the built-in keys.
//! A wrong password is `Error::BadCredentials` either way, never "offline".
//!
//! Either way the session holds the user's data key ([`crate::keys`]) and opens every
//! committed user-disk manifest with it: a manifest that fails its seal is refused.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use appliance::wire::{user_disk_api_path, LoginResponse};
use appliance::UserDiskManifest;
use cachefs::Cache;

use crate::client::{RepoClient, RepoConfig, MAX_JSON};
use crate::error::{Error, Result};
use crate::keys::{self, SessionKeys};
use crate::sealed::SealedChunks;
use crate::set::{self, Appliance, ApplianceSet, Refused};
use crate::store::{self, OfflineRecord, SavedAppliance, SavedUserDisk};

/// How the user got in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The repository said yes; fills and write-back work.
    Online,
    /// The repository could not be reached; the user works from the cache. `reason` says
    /// why, for the login screen.
    Offline { reason: String },
}

/// A logged-in user.
pub struct Session {
    /// User name.
    pub user: String,
    /// Online or offline.
    pub mode: Mode,
    /// The verified appliance set.
    pub set: ApplianceSet,
    /// The client with the session token (None offline).
    pub client: Option<RepoClient>,
    /// The record stored for the next offline login.
    pub record: OfflineRecord,
    /// The cache.
    pub cache: Arc<Cache>,
    /// The record as it was before this login replaced it: names the user-disk contents
    /// the terminal had, so an overlay left on an older base can be recognised
    /// ([`crate::writeback::open_session_user_disk`]).
    pub previous_record: Option<OfflineRecord>,
    /// The user's data key (None only offline from a record made before sealing).
    pub keys: Option<SessionKeys>,
    /// The user's sealed chunks known to this session (None without `keys`); the
    /// session's client carries the same, for its fetchers.
    pub sealed: Option<Arc<SealedChunks>>,
    /// Offline: when this offline login stops working (seconds since the epoch; the
    /// status line shows the date). None online.
    pub offline_until: Option<u64>,
    /// How many users' records and user disks the terminal keeps for offline login
    /// ([`Session::keep_recent_offline_users`]): `RepoConfig::offline_users`, or 0 when
    /// offline login is turned off.
    pub offline_users: usize,
}

impl Session {
    /// A line for the login screen.
    pub fn status_line(&self) -> String {
        match &self.mode {
            Mode::Online => format!(
                "{} logged in; {} appliance(s)",
                self.user,
                self.set.appliances.len()
            ),
            Mode::Offline { reason } => {
                let until = self
                    .offline_until
                    .map(|t| format!("; offline: works until {}", crate::offline::date(t)))
                    .unwrap_or_default();
                format!(
                    "OFFLINE: the repository is not available ({reason}). {} works from this terminal's cache; changes to user disks are kept here and written back at the next online logout{until}",
                    self.user
                )
            }
        }
    }

    /// After the logout's write-backs: keeps the offline records and user disks of the
    /// most recently logged-in users only (this one counts as the most recent), and
    /// returns the users whose records went. A user whose changes are not all written
    /// back keeps everything.
    pub fn keep_recent_offline_users(&self) -> Result<Vec<String>> {
        crate::offline::keep_recent_users(&self.cache, self.offline_users)
    }

    /// True when working offline.
    pub fn is_offline(&self) -> bool {
        matches!(self.mode, Mode::Offline { .. })
    }

    /// Once an updated appliance is complete, drops its previous version's pin and
    /// records that.
    pub fn release_previous(&mut self) -> Result<Vec<String>> {
        let released = set::release_previous(&self.cache, &mut self.set)?;
        if !released.is_empty() {
            for a in &mut self.record.appliances {
                if released.contains(&a.name) {
                    a.previous = None;
                }
            }
            store::save(&self.cache, &self.record)?;
        }
        Ok(released)
    }

    /// Ends the repository session (best effort).
    pub fn logout(&mut self) {
        if let Some(c) = &mut self.client {
            c.logout();
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Logs `user` in: online if the repository answers, offline from the cache otherwise.
///
/// With an offline record for `user` on this terminal, the login also goes offline when
/// the repository turns it away for now: busy (503, or a 429 other than the failed-login
/// limit) for longer than [`RepoConfig::busy_login_patience`], or the failed-login limit
/// itself (429 `rate_limited`). The password is then checked against the record, so a
/// wrong one is still `BadCredentials`, and the person's own pace of tries is the login
/// screen's (it waits longer after each failure). The record gives whoever holds the disk
/// the same chance of guessing anyway, so falling back opens nothing new.
pub fn login(
    cache: Arc<Cache>,
    config: &RepoConfig,
    user: &str,
    password: &str,
) -> Result<Session> {
    let has_record = store::users(&cache).iter().any(|u| u == user);
    let patience = has_record.then_some(config.busy_login_patience);
    let mut client = RepoClient::new(config.clone())?;
    match client.login_within(user, password, patience) {
        Ok(reply) => match online(cache.clone(), client, reply, password) {
            // The repository went away between the login and the manifests: work offline
            // rather than not at all.
            Err(e) if e.is_unreachable() => {
                log::warn!("login: {e}; trying offline login");
                offline_login(cache, config, user, password, e.to_string())
            }
            r => r,
        },
        Err(e) if e.is_unreachable() => {
            log::warn!("login: {e}; trying offline login");
            offline_login(cache, config, user, password, e.to_string())
        }
        Err(Error::BadCredentials) if has_record => {
            revoke_if_opened(&cache, user, password);
            Err(Error::BadCredentials)
        }
        Err(Error::RateLimited { retry_after_secs }) if has_record => {
            log::warn!("login: rate limited for {retry_after_secs} s; trying offline login");
            let reason = format!(
                "it turned the login away after too many failed attempts; online again in {retry_after_secs} s"
            );
            offline_login(cache, config, user, password, reason)
        }
        Err(e) => Err(e),
    }
}

/// The repository refused `password` for `user` (a wrong password or an unknown user:
/// it does not say which). If the password still opens this terminal's record, the
/// repository no longer accepts what this terminal would accept offline (the password was
/// changed or the user removed since the record was made): the record goes, so the old
/// password no longer works offline here. A password that does not open the record is a
/// typing error, and someone else's wrong guess must not delete a user's record. Costs
/// one opening of the wrapped key (about a tenth of a second), only after a refusal.
fn revoke_if_opened(cache: &Cache, user: &str, password: &str) {
    let record = match store::load(cache, user) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            log::warn!("offline record of {user}: {e}");
            return;
        }
    };
    if check_password(&record, user, password).is_err() {
        return;
    }
    log::warn!(
        "the repository refused a password that opens the offline record of {user}: it was changed or the user removed; removing the record"
    );
    if let Err(e) = crate::offline::revoke(cache, user) {
        log::error!("removing the offline record of {user}: {e}");
    }
}

/// Checks `password` against a record: it must open the wrapped data key (a record from
/// before sealing: match its verifier). `BadCredentials` if it does not.
fn check_password(
    record: &OfflineRecord,
    user: &str,
    password: &str,
) -> Result<Option<SessionKeys>> {
    match &record.data_key {
        Some(wrapped) => Ok(Some(SessionKeys::unlock(user, password, wrapped)?)),
        // A record from before sealing: its verifier, and its user disks are plaintext.
        None => match appliance::verify_password(&record.verifier, password) {
            Ok(()) => Ok(None),
            Err(appliance::Error::WrongPassword) => Err(Error::BadCredentials),
            Err(e) => Err(e.into()),
        },
    }
}

/// Fetches (with retries) a manifest or user-disk manifest: the login must not fail for
/// one dropped connection.
fn get_retry(client: &RepoClient, path: &str) -> Result<Vec<u8>> {
    let cfg = client.config();
    let mut attempt = 1;
    loop {
        match client.get(path, MAX_JSON) {
            Ok(b) => return Ok(b),
            Err(e) if e.is_unreachable() && attempt < cfg.attempts => {
                log::debug!("{path}: {e}; retrying");
                std::thread::sleep(cfg.retry_delay(attempt + 1, &e));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn api_retry<T: serde::de::DeserializeOwned>(client: &RepoClient, path: &str) -> Result<T> {
    let cfg = client.config();
    let mut attempt = 1;
    loop {
        match client.api::<T>("GET", path, None) {
            Err(e) if e.is_unreachable() && attempt < cfg.attempts => {
                std::thread::sleep(cfg.retry_delay(attempt + 1, &e));
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn online(
    cache: Arc<Cache>,
    mut client: RepoClient,
    reply: LoginResponse,
    password: &str,
) -> Result<Session> {
    let user = reply.user.clone();
    let keys = keys::online_keys(&client, &reply, password)?;
    let sealed = Arc::new(SealedChunks::new(keys.sealer.clone()));
    client.set_sealed(sealed.clone());
    let trusted = client.config().trusted_keys.clone();
    let offline_users = kept_users(client.config());
    let old = store::load(&cache, &user)?;
    let mut set = ApplianceSet {
        unavailable: reply.unavailable.clone(),
        ..Default::default()
    };
    let mut saved_apps = Vec::new();
    let mut saved_disks = Vec::new();
    for r in &reply.appliances {
        let verified = get_retry(&client, &r.manifest_path).and_then(|bytes| {
            let m = set::verify_manifest(
                &bytes,
                Some(&r.manifest_sha256),
                &r.name,
                r.version,
                &trusted,
            )?;
            let text = String::from_utf8(bytes).map_err(|_| Error::BadManifest {
                appliance: r.name.clone(),
                version: r.version,
                why: "not UTF-8".into(),
            })?;
            Ok((m, text))
        });
        let (manifest, text) = match verified {
            Ok(v) => v,
            Err(e) => {
                log::error!("appliance {} refused: {e}", r.name);
                set.refused.push(Refused {
                    name: r.name.clone(),
                    version: r.version,
                    reason: e.to_string(),
                });
                // Keep the last good record of it, so it still runs offline.
                if let Some(prev) = old
                    .as_ref()
                    .and_then(|o| o.appliances.iter().find(|a| a.name == r.name))
                {
                    saved_apps.push(prev.clone());
                }
                continue;
            }
        };
        // The previous version: what the last login ran, if it is another version whose pin
        // is still there (it stays usable until this one is complete).
        let previous = old
            .as_ref()
            .and_then(|o| o.appliances.iter().find(|a| a.name == r.name))
            .and_then(|p| {
                let (v, text) = if p.version != r.version {
                    (p.version, p.signed_manifest.clone())
                } else {
                    p.previous.clone()?
                };
                let pinned = cache
                    .pins()
                    .iter()
                    .any(|(n, _)| *n == set::app_pin(&r.name, v));
                if !pinned {
                    return None;
                }
                set::verify_manifest(text.as_bytes(), None, &r.name, v, &trusted)
                    .ok()
                    .map(|m| (m, text))
            });
        let mut disks = Vec::new();
        for d in reply.user_disks.iter().filter(|d| d.appliance == r.name) {
            let committed: Option<UserDiskManifest> = if d.version == 0 {
                None
            } else {
                let m: UserDiskManifest =
                    api_retry(&client, &user_disk_api_path(&d.appliance, &d.disk))?;
                m.validate()?;
                if m.user != user
                    || m.appliance != d.appliance
                    || m.disk != d.disk
                    || m.version != d.version
                {
                    return Err(Error::Protocol {
                        what: "user-disk manifest".into(),
                        why: format!(
                            "asked for {user}/{}/{} v{}, got {}/{}/{} v{}",
                            d.appliance, d.disk, d.version, m.user, m.appliance, m.disk, m.version
                        ),
                    });
                }
                Some(m)
            };
            let plain = committed
                .as_ref()
                .map(|m| sealed.open_manifest(m))
                .transpose()?;
            disks.push((
                SavedUserDisk {
                    appliance: d.appliance.clone(),
                    disk: d.disk.clone(),
                    version: d.version,
                    manifest: committed,
                },
                plain,
            ));
        }
        let user_disks = set::user_disks_of(&manifest, |disk| {
            disks
                .iter()
                .find(|(d, _)| d.disk == disk)
                .map(|(d, plain)| (d.version, plain.clone()))
                .unwrap_or((0, None))
        });
        saved_apps.push(SavedAppliance {
            name: r.name.clone(),
            version: r.version,
            signed_manifest: text.clone(),
            previous: previous.as_ref().map(|(m, t)| (m.version, t.clone())),
        });
        saved_disks.extend(disks.into_iter().map(|(d, _)| d));
        set.appliances.push(Appliance {
            manifest,
            signed_bytes: text,
            previous,
            user_disks,
        });
    }
    set::pin_set(&cache, &user, &set)?;
    let record = OfflineRecord {
        format: store::RECORD_FORMAT,
        user: user.clone(),
        verifier: String::new(),
        data_key: Some(keys.wrapped.clone()),
        saved_unix: now_unix(),
        online_unix: now_unix(),
        last_login_unix: now_unix(),
        appliances: saved_apps,
        user_disks: saved_disks,
    };
    store::save(&cache, &record)?;
    log::info!(
        "{user} logged in online: {} appliance(s), {} refused, {} unavailable",
        set.appliances.len(),
        set.refused.len(),
        set.unavailable.len()
    );
    Ok(Session {
        user,
        mode: Mode::Online,
        set,
        client: Some(client),
        record,
        cache,
        previous_record: old,
        keys: Some(keys),
        sealed: Some(sealed),
        offline_until: None,
        offline_users,
    })
}

/// Users kept for offline login: none when offline login is turned off.
fn kept_users(config: &RepoConfig) -> usize {
    if config.offline_days == 0 {
        0
    } else {
        config.offline_users
    }
}

/// Offline login from the stored record.
pub fn offline_login(
    cache: Arc<Cache>,
    config: &RepoConfig,
    user: &str,
    password: &str,
    reason: String,
) -> Result<Session> {
    let mut record =
        store::load(&cache, user)?.ok_or_else(|| Error::NoOfflineRecord(user.to_owned()))?;
    // Expiry first: an expired record is refused whatever the password, and the slow key
    // opening is not spent on it.
    let Some(until) = crate::offline::expires_unix(&record, config.offline_days) else {
        return Err(Error::OfflineDisabled { reason });
    };
    if now_unix() >= until {
        return Err(Error::OfflineExpired {
            user: user.to_owned(),
            last_online: crate::offline::date(record.online_unix),
            expired: crate::offline::date(until),
            days: config.offline_days,
            reason,
        });
    }
    let keys = check_password(&record, user, password)?;
    let sealed = keys
        .as_ref()
        .map(|k| Arc::new(SealedChunks::new(k.sealer.clone())));
    let mut set = ApplianceSet::default();
    for a in &record.appliances {
        let manifest = match set::verify_manifest(
            a.signed_manifest.as_bytes(),
            None,
            &a.name,
            a.version,
            &config.trusted_keys,
        ) {
            Ok(m) => m,
            Err(e) => {
                set.refused.push(Refused {
                    name: a.name.clone(),
                    version: a.version,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let previous = a.previous.as_ref().and_then(|(v, t)| {
            set::verify_manifest(t.as_bytes(), None, &a.name, *v, &config.trusted_keys)
                .ok()
                .map(|m| (m, t.clone()))
        });
        let mut plain = Vec::new();
        for d in record.user_disks.iter().filter(|d| d.appliance == a.name) {
            let content = match (&d.manifest, &sealed) {
                (None, _) => None,
                (Some(m), Some(s)) => Some(s.open_manifest(m)?),
                (Some(m), None) if !m.is_sealed() => Some(m.image.clone()),
                (Some(m), None) => return Err(Error::BadUserDisk {
                    appliance: m.appliance.clone(),
                    disk: m.disk.clone(),
                    why:
                        "it is sealed but the offline record holds no data key; log in online once"
                            .into(),
                }),
            };
            plain.push((d.disk.clone(), d.version, content));
        }
        let user_disks = set::user_disks_of(&manifest, |disk| {
            plain
                .iter()
                .find(|(name, _, _)| name == disk)
                .map(|(_, v, c)| (*v, c.clone()))
                .unwrap_or((0, None))
        });
        set.appliances.push(Appliance {
            manifest,
            signed_bytes: a.signed_manifest.clone(),
            previous,
            user_disks,
        });
    }
    // Counts as a recent login for the users a terminal keeps; the expiry stays tied to
    // the last online login. Not saving it only makes this user look older.
    record.last_login_unix = now_unix();
    if let Err(e) = store::save(&cache, &record) {
        log::warn!("offline record of {user}: the login time was not saved: {e}");
    }
    log::warn!(
        "{user} logged in OFFLINE ({reason}); offline login works until {}",
        crate::offline::date(until)
    );
    Ok(Session {
        user: user.to_owned(),
        mode: Mode::Offline { reason },
        set,
        client: None,
        previous_record: Some(record.clone()),
        record,
        cache,
        keys,
        sealed,
        offline_until: Some(until),
        offline_users: kept_users(config),
    })
}
