//! The power service's protocol. Slurm's power programs on the controller (the agent's `power`
//! command) ask the provider's power service to make or remove on-demand workers: one JSON
//! request line over a Unix socket, one JSON reply line back. Pure: types and the socket's name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What Slurm asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerVerb {
    /// Make the nodes (`ResumeProgram`).
    Resume,
    /// Remove the nodes and everything made for them (`SuspendProgram`, `ResumeFailProgram`).
    Suspend,
}

impl PowerVerb {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerVerb::Resume => "resume",
            PowerVerb::Suspend => "suspend",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerRequest {
    pub verb: PowerVerb,
    pub nodes: Vec<String>,
}

/// Per node: done, or why not (the cloud's reason, as Slurm shows it with the node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerReply {
    pub done: Vec<String>,
    pub failed: BTreeMap<String, String>,
}

impl PowerReply {
    /// Every one of `nodes` failed for `reason`.
    pub fn all_failed<'a>(nodes: impl IntoIterator<Item = &'a String>, reason: &str) -> Self {
        PowerReply {
            done: Vec::new(),
            failed: nodes
                .into_iter()
                .map(|n| (n.clone(), reason.to_owned()))
                .collect(),
        }
    }
}

/// Where the power service of `cluster` listens. On local it runs on the host (the controller's
/// namespaces share its file system); on a cloud node, on the controller itself.
pub fn power_socket(cluster: &str) -> String {
    format!("/run/hybridgrid/power/{cluster}.sock")
}

/// Slurm's node names hybridgrid gives worker `index` of a group: `<site>-<group>-<n>`; the
/// group (`<site>-<group>`) of a node name, for counting failures in a row.
pub fn group_of(node: &str) -> &str {
    node.rsplit_once('-')
        .filter(|(_, n)| n.parse::<u32>().is_ok())
        .map_or(node, |(group, _)| group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_one_json_line() {
        let r = PowerRequest {
            verb: PowerVerb::Resume,
            nodes: vec!["giessen-od-1".into()],
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"verb":"resume","nodes":["giessen-od-1"]}"#);
        assert_eq!(serde_json::from_str::<PowerRequest>(&line).unwrap(), r);
    }

    #[test]
    fn the_group_of_a_worker_drops_its_number() {
        assert_eq!(group_of("giessen-od-12"), "giessen-od");
        assert_eq!(group_of("giessen-gw"), "giessen-gw");
    }
}
