use std::path::PathBuf;

/// Why the node agent failed.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum AgentError {
    /// `{command}` failed: {detail}
    Command { command: String, detail: String },
    /// {path}: {source}
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// {path} is not valid JSON of the expected shape: {source}
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// WireGuard: {0}
    Wg(#[from] hybridgrid_wg::WgError),
    /// WireGuard key: {0}
    Key(#[from] hybridgrid_core::keys::KeyError),
    /// timed out after {seconds}s waiting for {what}
    Timeout { what: String, seconds: u64 },
    /// apt-get could not install {packages}: {detail}
    PackageInstall { packages: String, detail: String },
    /// {0}
    Other(String),
}

impl AgentError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AgentError {
        let path = path.into();
        move |source| AgentError::Io { path, source }
    }
}

pub use hybridgrid_core::error_chain;
