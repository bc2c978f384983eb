//! The appliance repository: the on-disk store, publishing, users and appliance sets,
//! garbage collection, image helpers, and the HTTP(S) server. The `collective-repo` binary
//! is a thin CLI over this library; tests and benchmarks use the library directly.

pub mod error;
pub mod fsutil;
pub mod gc;
pub mod image;
pub mod publish;
pub mod server;
pub mod store;
pub mod users;

pub use error::{Error, Result};
pub use store::Repo;
