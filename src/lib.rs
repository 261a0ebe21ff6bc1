//! envsnap: snapshot CI environments into a content-addressed store.
pub mod error;
pub mod key;
