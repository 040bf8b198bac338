use std::path::PathBuf;

/// Why the node agent failed.
///
/// A variant with a `#[source]` names what failed and where; its cause is the source's own
/// text, printed once by whoever prints the chain ([`error_chain`]). `{0}` marks a transparent
/// wrapper (its level is skipped there).
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum AgentError {
    /// `{command}` failed: {detail}
    Command { command: String, detail: String },
    /// {path}
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// {path} is not valid JSON of the expected shape
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// cannot write {what} as JSON
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// {0}
    Wg(#[from] hybridgrid_wg::WgError),
    /// {0}
    Key(#[from] hybridgrid_core::keys::KeyError),
    /// {0}
    State(#[from] hybridgrid_state::StateError),
    /// timed out after {seconds}s waiting for {what}
    Timeout { what: String, seconds: u64 },
    /// apt-get could not install {packages}: {detail}
    PackageInstall { packages: String, detail: String },
    /// the cluster's munge key is not on this node ({path}); `up` delivers it
    NoMungeKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// the object store of site {site} ({url}): {detail}
    StoreEndpoint {
        site: String,
        url: String,
        detail: String,
    },
    /// no next WireGuard key in {path} to switch to; `rotate` makes it first (run it again)
    NoNextKey { path: PathBuf },
    /// the munge key sent to switch to is not base64 (its content is not shown: it is a key)
    BadMungeKey,
    /// what `rotate` sent on standard input is not a switch document (line {line}, column {column}; its content is not shown: it holds keys)
    SwitchInput { line: usize, column: usize },
    /// {path} is not a JSON map of peer names to base64 keys (its content is not shown: it holds keys)
    PresharedKeys { path: PathBuf },
    /// {url}: only http:// URLs
    NotHttp { url: String },
    /// GET {url}
    HttpIo {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// GET {url}: {detail}
    Http { url: String, detail: String },
    /// the metadata from {url}
    Metadata {
        url: String,
        #[source]
        source: hybridgrid_core::node_meta::MetaError,
    },
}

impl AgentError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AgentError {
        let path = path.into();
        move |source| AgentError::Io { path, source }
    }

    pub(crate) fn encode(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> AgentError {
        let what = what.into();
        move |source| AgentError::Encode { what, source }
    }
}

pub use hybridgrid_core::error_chain;
