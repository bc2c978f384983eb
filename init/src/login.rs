//! Checking a user's credentials.
//!
//! The console asks an [`Authenticator`]; the receiver (repository login, offline login
//! from the cache) plugs in here. Until a firmware carries it, the terminal refuses every
//! login with a message that says what is missing, rather than pretending.

pub enum LoginOutcome {
    #[allow(dead_code)] // until the receiver's authenticator is part of the firmware
    Accepted,
    /// Why, in words for the person at the terminal.
    Refused(String),
}

pub trait Authenticator: Send + Sync {
    fn login(&self, user: &str, password: &str) -> LoginOutcome;
}

/// The authenticator of a firmware without a repository client.
pub struct NoRepositoryClient {
    pub repo: Option<String>,
}

impl Authenticator for NoRepositoryClient {
    fn login(&self, _user: &str, _password: &str) -> LoginOutcome {
        LoginOutcome::Refused(match &self.repo {
            None => "this terminal has no repository configured; add collective.repo=URL to the kernel command line (boot.ipxe)".into(),
            Some(url) => format!("this firmware cannot log in to {url} yet: it has no repository client"),
        })
    }
}
