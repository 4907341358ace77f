//! Exit status: 0 fine, 1 runtime failure, 2 configuration or usage error.

pub const OK: i32 = 0;
pub(crate) const RUNTIME: i32 = 1;
pub const CONFIG: i32 = 2;

/// Why `run` could not start serving, and the exit status that says so.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration mistake found only when acting on it (trust, a systemd socket): exit 2.
    #[error("{0}")]
    Config(String),
    /// The system refused (a busy port, a missing permission): exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl StartError {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) => CONFIG,
            StartError::Runtime(_) => RUNTIME,
        }
    }
}
