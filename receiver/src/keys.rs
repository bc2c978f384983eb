//! The user's data key in a session: unwrapped at login with the password the person
//! typed, held only in the session's memory (wiped when dropped), and re-wrapped when the
//! person changes their password.
//!
//! Online, the key comes wrapped in the login reply. A user whose record predates sealing
//! has none: the terminal makes one, wraps it with the password (and the organisation's
//! recovery key if the repository has one) and stores it with `PUT /api/v1/key` before
//! anything is written back. Offline, the wrapped key kept in the offline record opens with
//! the password: that is the offline password check too.

use std::sync::Arc;

use appliance::wire::{
    ChangePasswordRequest, LoginResponse, SetKeyRequest, KEY_PATH, PASSWORD_PATH,
};
use appliance::{DataKey, RecoveryPublicKey, UserSealer, WrappedKey};

use crate::client::RepoClient;
use crate::error::{Error, Result};
use crate::login::Session;

/// The unwrapped key of the logged-in user and what the session derives from it.
pub struct SessionKeys {
    /// The key (zeroed on drop).
    key: DataKey,
    /// The key as the repository keeps it (what the offline record stores).
    pub wrapped: WrappedKey,
    /// The sealer derived from the key.
    pub sealer: Arc<UserSealer>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeys({})", self.wrapped.key_id)
    }
}

impl SessionKeys {
    fn new(key: DataKey, wrapped: WrappedKey) -> SessionKeys {
        let sealer = Arc::new(UserSealer::new(&key));
        SessionKeys {
            key,
            wrapped,
            sealer,
        }
    }

    /// Opens `wrapped` with the password. A password that does not open it is
    /// [`Error::BadCredentials`]: offline, this is the password check.
    pub fn unlock(user: &str, password: &str, wrapped: &WrappedKey) -> Result<SessionKeys> {
        let started = std::time::Instant::now();
        let key = match wrapped.unwrap_with_password(user, password) {
            Ok(k) => k,
            Err(appliance::Error::WrongPassword) => return Err(Error::BadCredentials),
            Err(e) => {
                return Err(Error::DataKey {
                    user: user.into(),
                    why: e.to_string(),
                })
            }
        };
        log::info!(
            "{user}: data key {} unwrapped in {} ms (argon2id m={} KiB t={} p={})",
            wrapped.key_id,
            started.elapsed().as_millis(),
            wrapped.password.m_kib,
            wrapped.password.t,
            wrapped.password.p
        );
        Ok(SessionKeys::new(key, wrapped.clone()))
    }
}

/// The keys of an online login: the reply's wrapped key opened with the password, or, for
/// a record from before sealing, a new key stored on the repository.
pub(crate) fn online_keys(
    client: &RepoClient,
    reply: &LoginResponse,
    password: &str,
) -> Result<SessionKeys> {
    let user = &reply.user;
    if let Some(wrapped) = &reply.data_key {
        return SessionKeys::unlock(user, password, wrapped).map_err(|e| match e {
            // The repository accepted this password, so the wrap is not the password's.
            Error::BadCredentials => Error::DataKey {
                user: user.clone(),
                why: "the repository accepted the password but the wrapped data key in the user's record does not open with it (the record was changed behind the user's back); ask the administrator".into(),
            },
            e => e,
        });
    }
    let recovery = reply
        .recovery_key
        .as_deref()
        .map(RecoveryPublicKey::parse)
        .transpose()
        .map_err(|e| Error::Protocol {
            what: "recovery key in the login reply".into(),
            why: e.to_string(),
        })?;
    let key = DataKey::generate();
    let wrapped = key.wrap(user, password, client.config().wrap_kdf, recovery.as_ref())?;
    let body = serde_json::to_vec(&SetKeyRequest {
        key: wrapped.clone(),
    })
    .map_err(|e| Error::Config(e.to_string()))?;
    client
        .api_raw("PUT", KEY_PATH, &body)
        .map_err(|f| f.error)?;
    log::info!(
        "{user}: had no data key (a record from before sealing); made {} and stored it wrapped",
        wrapped.key_id
    );
    Ok(SessionKeys::new(key, wrapped))
}

/// The person changes their own password: the old one is checked by the repository, the
/// data key (the same key: nothing needs re-sealing) goes up wrapped with the new one. The
/// repository then ends every session of the user, this one included: log in again.
pub fn change_password(session: &Session, old: &str, new: &str) -> Result<()> {
    let keys = session.keys.as_ref().ok_or_else(|| Error::DataKey {
        user: session.user.clone(),
        why: "this session has no data key".into(),
    })?;
    let client = session.client.as_ref().ok_or_else(|| Error::Unreachable {
        url: "(offline session)".into(),
        why: "a password can be changed only online".into(),
    })?;
    if new.is_empty() {
        return Err(Error::Config("the new password must not be empty".into()));
    }
    let wrapped = keys
        .wrapped
        .rewrap(&keys.key, &session.user, new, client.config().wrap_kdf)?;
    let body = serde_json::to_vec(&ChangePasswordRequest {
        old_password: old.into(),
        new_password: new.into(),
        key: wrapped,
    })
    .map_err(|e| Error::Config(e.to_string()))?;
    client
        .api_raw("POST", PASSWORD_PATH, &body)
        .map_err(|f| f.error)?;
    log::info!("{}: password changed; log in again", session.user);
    Ok(())
}
