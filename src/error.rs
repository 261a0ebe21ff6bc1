//! Placeholder matching CORE_API.md until the core lands (the lead's version wins on merge).
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Miss(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Error {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Miss(_) => 1,
            _ => 2,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
