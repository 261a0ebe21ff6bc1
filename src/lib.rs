pub mod apt;
pub mod error;
