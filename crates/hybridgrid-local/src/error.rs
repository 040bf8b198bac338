use std::path::PathBuf;

/// Why the local provider or the node agent failed.
///
/// A variant with a `#[source]` names what failed and where; its cause is the source's own
/// text, printed once by whoever prints the chain ([`hybridgrid_core::error_chain`]).
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum LocalError {
    /// {0}
    Store(#[from] hybridgrid_store::StoreError),
    /// `{command}` failed: {detail}
    Command { command: String, detail: String },
    /// {path}
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// {0}
    State(#[from] hybridgrid_engine::state::StateError),
    /// {path} is not valid JSON of the expected shape
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// cannot encode {path} as JSON
    Encode {
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
    /// relay {node} of pair {pair} has no key: the cluster's pair keys lack it
    NoPairKey { node: String, pair: String },
    /// site {site} is not in the plan
    SiteNotInPlan { site: String },
    /// node {node} is not in the plan
    NodeNotInPlan { node: String },
    /// site {site} has no network yet
    NoSiteNetwork { site: String },
    /// site {site}: the local provider emulates at most {max} sites
    TooManySites { site: String, max: u32 },
    /// the emulated cloud refuses to make {node}: {reason}
    Refused { node: String, reason: String },
    /// no floating IP left in 198.51.100.0/24 for {node} (site {site})
    NoFloatingIp { site: String, node: String },
    /// the holder of {node} exited: {log}
    HolderExited { node: String, log: String },
    /// the power service exited: {log}
    PowerServiceExited { log: String },
    /// the WAN link of site {site} exited: {log}
    WanLinkExited { site: String, log: String },
    /// cannot create TAP device {name}
    Tap {
        name: String,
        #[source]
        source: tun::Error,
    },
    /// WAN link ({direction})
    WanLink {
        direction: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// WAN link ({direction}) panicked
    WanLinkPanicked { direction: &'static str },
    /// cluster {cluster} has namespaces on this host but no ledger in {dir} and no owner record
    /// naming another: set HYBRIDGRID_STATE_DIR to the state directory `up` used, or run
    /// `hybridgrid gc` to remove the leftovers
    Orphaned { cluster: String, dir: PathBuf },
    /// the thread applying `{change}` panicked
    ChangePanicked { change: String },
    /// the thread rendering the port security and security groups of site {site} panicked
    RenderPanicked { site: String },
    /// {count} of the changes failed; first
    Failed {
        count: usize,
        #[source]
        first: Box<LocalError>,
    },
}

impl LocalError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LocalError {
        let path = path.into();
        move |source| LocalError::Io { path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every level of the `source()` chain joined by ": ", as the CLI prints it.
    fn chain(e: &dyn std::error::Error) -> String {
        std::iter::successors(Some(e), |e| e.source())
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ")
    }

    #[test]
    fn each_cause_is_printed_once() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let io = LocalError::io("/state/c/ledger.json")(denied);
        assert_eq!(chain(&io), "/state/c/ledger.json: permission denied");
        let failed = LocalError::Failed {
            count: 2,
            first: Box::new(io),
        };
        assert_eq!(
            chain(&failed),
            "2 of the changes failed; first: /state/c/ledger.json: permission denied"
        );
        let json = serde_json::from_str::<u32>("x").unwrap_err();
        let text = json.to_string();
        let e = LocalError::Json {
            path: "node.json".into(),
            source: json,
        };
        assert_eq!(
            chain(&e),
            format!("node.json is not valid JSON of the expected shape: {text}")
        );
    }
}
