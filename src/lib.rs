pub mod error;
pub mod venv;
