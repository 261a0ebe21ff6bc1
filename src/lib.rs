//! envsnap: snapshots of CI environments in a content-addressed store.
//!
//! The library never prints: every operation returns a report and the binary (`src/main.rs`,
//! `src/cli/`) decides what to show. Modules follow the data flow:
//!
//! - [`key`]: cache-key rules (and templates);
//! - [`store`]: content-addressed objects (`objects-v1/`) behind the [`store::ObjectStore`] trait;
//! - [`index`]: the SQLite index of snapshots, entries and the save stat cache;
//! - [`snapshot`]: entries, manifests and the path-safety rules every restore enforces;
//! - [`repo`]: [`Store`], one store directory (objects + index + lock) and snapshot lookup;
//! - [`save`]: walk, hash and ingest a tree (or a list of paths) as one snapshot;
//! - [`restore`]: plan-then-apply restore engine with reflink/hardlink/copy link modes;
//! - [`beneath`]: paths resolved beneath a root, never through a symlink leading out of it;
//! - [`gc`] and [`verify`]: store maintenance; [`delete`]: dropping keys on purpose;
//! - [`events`] and [`stats`]: one event per restore and save, and the statistics over them;
//! - [`venv`]: virtualenv snapshots (save with per-file path notes, restore with fixups);
//! - [`remote`]: a remote store on S3-compatible storage or a shared filesystem (packs, refs).

pub mod apt;
pub mod beneath;
pub mod delete;
pub mod diskfull;
pub mod error;
pub mod events;
pub mod gc;
pub mod index;
pub mod key;
pub mod lock;
pub mod process;
pub mod progress;
pub mod remote;
pub mod repo;
pub mod restore;
pub mod save;
pub mod snapshot;
pub mod statcache;
pub mod stats;
pub mod store;
pub mod venv;
pub mod verify;

pub use error::{Error, Result};
pub use repo::{Hit, Store};

/// The version recorded in every snapshot, so a store can tell which envsnap wrote it.
pub const TOOL_VERSION: &str = concat!("envsnap ", env!("CARGO_PKG_VERSION"));
