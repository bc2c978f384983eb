//! User administration: records, passwords, appliance sets.

use appliance::names::validate_name;
use appliance::user::hash_password;
use appliance::{KdfParams, UserRecord};

use crate::error::{Error, Result};
use crate::store::Repo;

/// Adds a user with an empty appliance set.
pub fn add(repo: &Repo, name: &str, password: &str, kdf: KdfParams) -> Result<()> {
    if repo.user(name)?.is_some() {
        return Err(Error::User(format!("user {name} exists already: use `collective-repo user passwd {name}` to change the password, or pick another name")));
    }
    repo.create_user(&UserRecord::new(name, password, kdf)?)
}

fn existing(repo: &Repo, name: &str) -> Result<UserRecord> {
    repo.user(name)?.ok_or_else(|| Error::User(format!("there is no user {name}: see `collective-repo list`, or add one with `collective-repo user add {name}`")))
}

/// Sets a new password.
pub fn passwd(repo: &Repo, name: &str, password: &str, kdf: KdfParams) -> Result<()> {
    let mut rec = existing(repo, name)?;
    if password.is_empty() {
        return Err(Error::Usage("the password must not be empty".into()));
    }
    rec.verifier = hash_password(password, kdf)?;
    repo.update_user(&rec)
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
