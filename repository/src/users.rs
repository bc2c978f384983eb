//! User administration: records, passwords, data keys, appliance sets.
//!
//! A user's data key is made here (`user add`) and immediately wrapped: this program
//! never stores it, and a password change by the administrator can re-wrap it only with
//! the organisation's recovery secret key. Without that key, a new password means a new
//! data key, and the user's committed disks can no longer be read: [`passwd`] refuses
//! unless told [`PasswdMode::DiscardData`].

use appliance::names::validate_name;
use appliance::user::hash_password;
use appliance::{DataKey, KdfParams, RecoverySecretKey, UserRecord};

use crate::error::{Error, Result};
use crate::store::Repo;

/// Adds a user with an empty appliance set and a fresh data key, wrapped with the
/// password (`wrap` parameters) and with the recovery key if the repository has one.
pub fn add(repo: &Repo, name: &str, password: &str, kdf: KdfParams, wrap: KdfParams) -> Result<()> {
    if repo.user(name)?.is_some() {
        return Err(Error::User(format!("user {name} exists already: use `collective-repo user passwd {name}` to change the password, or pick another name")));
    }
    let recovery = repo.recovery_key()?;
    if recovery.is_none() {
        log::info!("no recovery key installed: only {name}'s password opens their data key");
    }
    repo.create_user(&UserRecord::with_key(
        name,
        password,
        kdf,
        wrap,
        recovery.as_ref(),
    )?)
}

/// How an administrator's password change treats the user's data key.
pub enum PasswdMode<'a> {
    /// Re-wrap the same key, opened with the organisation's recovery secret key: the
    /// user's data stays readable.
    Recovery(&'a RecoverySecretKey),
    /// A new data key: the user's committed disks are sealed with the old one, which
    /// nobody can open any more, so they are removed (their chunks go with `gc`).
    DiscardData,
    /// Neither: allowed only for a user who has no data key yet (a record from before
    /// sealing); otherwise refused with what to do.
    Plain,
}

/// What [`passwd`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum PasswdOutcome {
    /// Password and wrap changed; the data key is the same.
    Rewrapped,
    /// New password, new data key; this many committed user disks were discarded.
    Discarded(usize),
    /// The user had no data key (a record from before sealing): only the verifier changed.
    NoKey,
}

fn existing(repo: &Repo, name: &str) -> Result<UserRecord> {
    repo.user(name)?.ok_or_else(|| Error::User(format!("there is no user {name}: see `collective-repo list`, or add one with `collective-repo user add {name}`")))
}

/// Whether [`passwd`] with `mode` can go ahead for `name` (checked before asking for a
/// password): the error says what to do instead.
pub fn check_passwd(repo: &Repo, name: &str, mode: &PasswdMode) -> Result<()> {
    let rec = existing(repo, name)?;
    match (&rec.data_key, mode) {
        (None, PasswdMode::Recovery(_)) => Err(Error::Usage(format!("{name} has no data key yet (a record from before sealing): change the password without --recovery-key; {name}'s terminal makes the key at the next login"))),
        (Some(old), PasswdMode::Plain) => {
            let how = if old.recovery.is_some() {
                "give the organisation's recovery key with `--recovery-key FILE`".to_owned()
            } else {
                format!("{name}'s key has no recovery wrap (no recovery key was installed when it was made), so only {name}'s old password opens it")
            };
            Err(Error::Usage(format!(
                "{name}'s data is sealed with a key that only their password opens, and this repository cannot re-wrap it. Either {name} changes the password themselves at a terminal (the old one opens the key), or {how}; or, to give {name} a new password and an EMPTY start, run again with --discard-data: every user disk of {name} becomes unreadable and is removed"
            )))
        }
        _ => Ok(()),
    }
}

/// Sets a new password, and re-wraps or replaces the data key as `mode` says.
pub fn passwd(
    repo: &Repo,
    name: &str,
    password: &str,
    kdf: KdfParams,
    wrap: KdfParams,
    mode: PasswdMode,
) -> Result<PasswdOutcome> {
    check_passwd(repo, name, &mode)?;
    let mut rec = existing(repo, name)?;
    if password.is_empty() {
        return Err(Error::Usage("the password must not be empty".into()));
    }
    let outcome = match (&rec.data_key, mode) {
        (None, _) => PasswdOutcome::NoKey,
        (Some(old), PasswdMode::Recovery(secret)) => {
            let key = old.unwrap_with_recovery(secret).map_err(|e| {
                Error::Usage(format!("cannot open {name}'s data key with this recovery key: {e}. Check the file; without the right one, only --discard-data goes ahead"))
            })?;
            rec.data_key = Some(old.rewrap(&key, name, password, wrap)?);
            PasswdOutcome::Rewrapped
        }
        (Some(_), PasswdMode::DiscardData) => {
            let recovery = repo.recovery_key()?;
            rec.data_key =
                Some(DataKey::generate().wrap(name, password, wrap, recovery.as_ref())?);
            // The record first: if the removal fails half-way, the disks left are refused
            // by terminals (sealed with the old key), never half-readable.
            rec.format = appliance::user::USER_RECORD_FORMAT;
            rec.verifier = hash_password(password, kdf)?;
            repo.update_user(&rec)?;
            let n = repo.remove_user_disks(name)?;
            log::warn!("{name}: new data key; {n} user disk(s) sealed with the old key discarded");
            return Ok(PasswdOutcome::Discarded(n));
        }
        (Some(_), PasswdMode::Plain) => {
            // check_passwd refused this already; kept so that no path replaces a key silently.
            return Err(Error::Usage(format!(
                "{name}'s data key cannot be re-wrapped without --recovery-key or --discard-data"
            )));
        }
    };
    rec.verifier = hash_password(password, kdf)?;
    repo.update_user(&rec)?;
    Ok(outcome)
}

/// Removes a user (their user disks are kept).
pub fn remove(repo: &Repo, name: &str) -> Result<()> {
    validate_name("user name", name)?;
    if !repo.remove_user(name)? {
        return Err(Error::User(format!(
            "there is no user {name}; nothing removed"
        )));
    }
    Ok(())
}

/// Replaces a user's appliance set. Every appliance must have a published version, so a
/// typo is caught here rather than at the user's next login.
pub fn assign(repo: &Repo, name: &str, appliances: &[String]) -> Result<()> {
    let mut rec = existing(repo, name)?;
    for a in appliances {
        validate_name("appliance name", a)?;
        if repo.latest(a)?.is_none() {
            return Err(Error::Usage(format!("appliance {a} has no published version: publish it first (`collective-repo publish`), or check the name with `collective-repo list`")));
        }
    }
    let mut unique = Vec::new();
    for a in appliances {
        if !unique.contains(a) {
            unique.push(a.clone());
        }
    }
    rec.appliances = unique;
    repo.update_user(&rec)
}

/// A human-readable listing of appliances (versions) and users (sets).
pub fn list(repo: &Repo) -> Result<String> {
    let mut out = String::from("appliances:\n");
    let apps = repo.appliances()?;
    if apps.is_empty() {
        out.push_str("  (none)\n");
    }
    for (name, versions) in &apps {
        let vs: Vec<String> = versions.iter().map(u64::to_string).collect();
        out.push_str(&format!("  {name}: versions {}\n", vs.join(", ")));
    }
    out.push_str("users:\n");
    let users = repo.user_names()?;
    if users.is_empty() {
        out.push_str("  (none)\n");
    }
    for u in users {
        match repo.user(&u) {
            Ok(Some(rec)) => out.push_str(&format!("  {u}: set [{}]\n", rec.appliances.join(", "))),
            Ok(None) => {}
            Err(e) => out.push_str(&format!("  {u}: unreadable record: {e}\n")),
        }
    }
    Ok(out)
}
