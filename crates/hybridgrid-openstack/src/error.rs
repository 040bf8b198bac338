use std::path::PathBuf;

/// What went wrong talking to the clouds or keeping the ledger.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum OsError {
    /// cannot read the clouds configuration{path}: {message}
    CloudsFile { path: String, message: String },
    /// site {site} has no `cloud` (the openstack provider needs one per site)
    NoCloudName { site: String },
    /// no cloud `{cloud}` in the clouds configuration (site {site})
    NoCloud { site: String, cloud: String },
    /// cannot connect to cloud `{cloud}`: {message}
    Connect { cloud: String, message: String },
    /// cloud `{cloud}`: {what}: {message}
    Api {
        cloud: String,
        what: String,
        status: Option<u16>,
        message: String,
    },
    /// site {site}: {message}
    Site { site: String, message: String },
    /// ledger {path}: {message}
    Ledger { path: PathBuf, message: String },
    /// {0}
    State(#[from] hybridgrid_engine::state::StateError),
    /// stopped after {0} create calls (injected crash, a test hook)
    CrashInjected(usize),
    /// server {name} did not become ACTIVE: {message}
    ServerFailed { name: String, message: String },
    /// node {node}, over SSH: {detail}
    Channel { node: String, detail: String },
    /// node {node} lacks packages its role needs: {detail}
    PackageInstall { node: String, detail: String },
    /// the nodes' Slurm versions cannot run together: {problems}
    SlurmVersions { problems: String },
    /// {0}
    Other(String),
}

impl OsError {
    /// The HTTP status of a failed API call, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            OsError::Api { status, .. } => *status,
            _ => None,
        }
    }
}

pub type Result<T, E = OsError> = std::result::Result<T, E>;
