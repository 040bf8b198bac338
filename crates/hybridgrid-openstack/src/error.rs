use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong talking to the clouds or the nodes, or keeping the ledger.
///
/// A variant with a `#[source]` names what failed and where; its cause is the source's own
/// text, printed once by whoever prints the chain ([`hybridgrid_core::error_chain`]).
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
    /// {resource} from {api} has no `{field}`
    MissingField {
        api: Service,
        resource: String,
        field: &'static str,
    },
    /// site {site}: {message}
    Site { site: String, message: String },
    /// site {site} is not in the plan
    SiteNotInPlan { site: String },
    /// site {site} is not in the cluster file
    SiteNotInFile { site: String },
    /// node {node} is not in the plan
    NodeNotInPlan { node: String },
    /// site {site}: security group {group} not found
    NoSecurityGroup { site: String, group: String },
    /// site {site}: node {node} has no port
    NoPort { site: String, node: String },
    // A step several others waited for (the keypair, the router's interface): its error as it
    // is, reported once by the step's own branch.
    /// {0}
    Shared(#[source] Arc<OsError>),
    /// ledger {path}: {message}
    Ledger { path: PathBuf, message: String },
    /// {0}
    State(#[from] hybridgrid_engine::state::StateError),
    /// stopped after {0} create calls (injected crash, a test hook)
    CrashInjected(usize),
    /// server {name} did not become ACTIVE: {message}
    ServerFailed { name: String, message: String },
    /// the task waiting for the server of {node} ended before it did
    ServerWaitTask {
        node: String,
        #[source]
        source: tokio::task::JoinError,
    },
    /// node {node}, over SSH: {detail}
    Channel { node: String, detail: String },
    /// node {node} cannot be reached yet: its relay has no floating IP
    NoRelayAddress { node: String },
    /// node {node} is not in the plan or cannot be reached yet
    NoTarget { node: String },
    /// relay {node} of a pair has no key: the cluster's pair keys lack its pair
    NoPairKey { node: String },
    /// cannot create the node channel's directory {path}
    ChannelDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// cannot run ssh for node {node}
    Ssh {
        node: String,
        #[source]
        source: std::io::Error,
    },
    /// cannot read the cluster file's `ssh_public_key` {path}
    SshPublicKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// no node agent's binary at {path} (it is built with hybridgrid: `cargo build`, or `cargo install --path crates/hybridgrid-agent` beside an installed hybridgrid)
    NoAgentBinary {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// cannot read the node agent's binary {path}
    AgentBinaryRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// cannot keep the stripped node agent's binary at {path}
    AgentCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// the agent on {node} failed: {detail}
    AgentEach { node: String, detail: String },
    /// cannot write the configuration of node {node} as JSON
    NodeConfigJson {
        node: String,
        #[source]
        source: serde_json::Error,
    },
    /// node {node} lacks packages its role needs: {detail}
    PackageInstall { node: String, detail: String },
    /// the nodes' Slurm versions cannot run together: {problems}
    SlurmVersions { problems: String },
    /// cannot read {path} (the power service's files on the master)
    PowerHostFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// on-demand workers need the full `hybridgrid` on the master, and this run knows no path to it
    NoPowerBinary,
    /// cloud `{cloud}`: cannot make the application credential the master's power service needs ({detail}); an application credential that is not `unrestricted` cannot make others: give the site credentials of a user
    PowerCredential { cloud: String, detail: String },
    /// site {site} holds a dataset in a bucket, but cloud `{cloud}` has no public object-store endpoint in its catalog (region {region})
    NoObjectStore {
        site: String,
        cloud: String,
        region: String,
    },
    /// site {site}: cannot make the S3 keys (EC2 credentials) of its object store in cloud `{cloud}` ({detail}); an application credential that is not `unrestricted` cannot make them: give the site credentials of a user
    StoreKeys {
        site: String,
        cloud: String,
        detail: String,
    },
    /// cannot keep the object stores' keys in {path}
    StoreKeysDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// the task making the buckets ended before it did
    BucketTask {
        #[source]
        source: tokio::task::JoinError,
    },
    /// {0}
    Store(#[from] hybridgrid_store::StoreError),
    /// site {site}: not enough quota for {nodes}: {shortfall}
    Quota {
        site: String,
        nodes: String,
        shortfall: String,
    },
    /// the openstack provider blocks: call it from a multi-threaded tokio runtime or from none
    RuntimeFlavor,
    /// cannot start the openstack provider's async runtime
    Runtime {
        #[source]
        source: Arc<std::io::Error>,
    },
}

/// The OpenStack service an answer came from, for [`OsError::MissingField`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, displaydoc::Display)]
pub enum Service {
    /// Keystone
    Keystone,
    /// Neutron
    Neutron,
    /// Nova
    Nova,
    /// Glance
    Glance,
    /// Swift
    Swift,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_printed_once() {
        let e = OsError::Ssh {
            node: "a-gw".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no ssh here"),
        };
        assert_eq!(
            hybridgrid_core::error_chain(&e),
            "cannot run ssh for node a-gw: no ssh here"
        );
        let inner = OsError::Api {
            cloud: "c1".into(),
            what: "create keypair".into(),
            status: Some(409),
            message: "conflict".into(),
        };
        let e = OsError::Shared(Arc::new(inner));
        assert_eq!(e.to_string(), "cloud `c1`: create keypair: conflict");
        assert_eq!(
            hybridgrid_core::error_chain(&e),
            "cloud `c1`: create keypair: conflict"
        );
    }
}
