//! The repository client of the Collective terminal: logs a user in (online, or offline
//! from the cache), verifies the user's appliance set, fills the cache (boot chunks
//! first, several connections, every chunk verified, resumable), serves the VMM's demand
//! reads ahead of the fill, and writes user disks back by compare-and-swap.
//!
//! How init uses it (see docs/receiver.md):
//!
//! ```text
//! let session = receiver::login(cache.clone(), &config, user, password)?;   // Online or Offline
//! let fetcher = receiver::Fetcher::new(session.client.clone().unwrap());   // online only
//! let fill = receiver::fill::start(cache.clone(), fetcher.clone(), &session.set, FillOptions::default());
//! // views for the VMM: misses go to `fetcher` and jump the fill's queue
//! let view = receiver::disks::view(&cache, &blob, fetcher.clone())?;
//! loop { show(fill.progress()) } ...
//! receiver::write_back(&mut session, "desk", "user", &overlay)?;          // at logout
//! ```

pub mod client;
pub mod disks;
pub mod error;
pub mod fetch;
pub mod fill;
pub mod keys;
pub mod login;
pub mod offline;
pub mod progress;
pub mod sealed;
pub mod set;
pub mod store;
pub mod writeback;

pub use client::{RepoClient, RepoConfig};
pub use error::{Error, Result};
pub use fetch::{FetchCounts, Fetcher};
pub use fill::{ApplianceProgress, FillHandle, FillOptions, Progress};
pub use keys::{change_password, SessionKeys};
pub use login::{login, offline_login, Mode, Session};
pub use set::{Appliance, ApplianceSet, Refused};
pub use writeback::{open_session_user_disk, write_back, WriteBackReport};

/// Opens the cache on `path` (a partition or a file), formatting it if it holds no cache
/// or one of an unknown version (the cache holds nothing that cannot be fetched again,
/// except user overlays, which an unknown version could not be read anyway).
pub fn open_cache(
    path: &std::path::Path,
    compress: bool,
) -> Result<std::sync::Arc<cachefs::Cache>> {
    let opts = cachefs::OpenOptions {
        compress,
        ..Default::default()
    };
    let dev = cachefs::FileStorage::open(path)
        .map_err(|e| Error::Config(format!("cache device {}: {e}", path.display())))?;
    match cachefs::Cache::open_with(Box::new(dev), opts.clone()) {
        Ok(c) => Ok(std::sync::Arc::new(c)),
        Err(cachefs::Error::NotCacheFs) | Err(cachefs::Error::UnsupportedVersion(..)) => {
            log::warn!("{} holds no usable cache; formatting it", path.display());
            let dev = cachefs::FileStorage::open(path)
                .map_err(|e| Error::Config(format!("cache device {}: {e}", path.display())))?;
            let c = cachefs::Cache::create(Box::new(dev), cachefs::CreateOptions { force: true })?;
            drop(c);
            let dev = cachefs::FileStorage::open(path)
                .map_err(|e| Error::Config(format!("cache device {}: {e}", path.display())))?;
            Ok(std::sync::Arc::new(cachefs::Cache::open_with(
                Box::new(dev),
                opts,
            )?))
        }
        Err(e) => Err(e.into()),
    }
}
