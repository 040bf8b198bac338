use std::path::PathBuf;

/// Why the local provider or the node agent failed.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum LocalError {
    /// `{command}` failed: {detail}
    Command { command: String, detail: String },
    /// {path}: {source}
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// {0}
    State(#[from] hybridgrid_engine::state::StateError),
    /// {path} is not valid JSON of the expected shape: {source}
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// {0}
    Agent(#[from] hybridgrid_agent::AgentError),
    /// timed out after {seconds}s waiting for {what}
    Timeout { what: String, seconds: u64 },
    /// cluster {cluster} already runs on this host with its state in {other}
    Owned { cluster: String, other: PathBuf },
    /// node {0} is not part of this cluster or not running
    NoSuchNode(String),
    /// {0}
    Other(String),
    /// {count} of the changes failed; first: {first}
    Failed {
        count: usize,
        first: Box<LocalError>,
    },
}

impl LocalError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LocalError {
        let path = path.into();
        move |source| LocalError::Io { path, source }
    }
}
