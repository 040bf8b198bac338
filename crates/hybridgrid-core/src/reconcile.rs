//! The plan of a cluster against what exists: its layout ([`crate::plan`]) and the changes from
//! the observed state to it ([`crate::diff`]). The one entry point for `plan` and every round of
//! `up`.
//!
//! Architecture invariant: pure. The same cluster and observed state give the same plan, byte for
//! byte once serialised.

use std::collections::BTreeSet;

use crate::change::Change;
use crate::diff;
use crate::model::Cluster;
use crate::observed::Observed;
use crate::plan::{self, Plan};

/// The cluster laid out with nothing observed: its sites, nodes, names and addresses, no
/// change. What a provider's `observe` looks for.
pub fn layout(cluster: &Cluster) -> Plan {
    plan::layout(cluster, &Observed::default())
}

/// Builds the plan and its changes.
pub fn plan(cluster: &Cluster, observed: &Observed) -> Plan {
    let mut p = plan::layout(cluster, observed);
    p.changes = diff::changes(&p, observed);
    p
}

/// A request of Slurm's power saving names a node that is not an on-demand worker of the plan.
#[derive(Debug, Clone, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
/// {node} is not an on-demand worker of cluster {cluster}
pub struct NotOnDemand {
    pub cluster: String,
    pub node: String,
}

/// The plan whose changes wake the on-demand workers `nodes`: each made and configured as `up`
/// would, nothing else touched.
pub fn wake(
    cluster: &Cluster,
    observed: &Observed,
    nodes: &BTreeSet<String>,
) -> Result<Plan, NotOnDemand> {
    let mut p = on_demand_layout(cluster, observed, nodes)?;
    p.changes = diff::changes_waking(&p, observed, nodes)
        .into_iter()
        .filter(|c| change_node(c).is_some_and(|n| nodes.contains(n)))
        .collect();
    Ok(p)
}

/// The plan whose changes remove the on-demand workers `nodes` (those that exist).
pub fn sleep(
    cluster: &Cluster,
    observed: &Observed,
    nodes: &BTreeSet<String>,
) -> Result<Plan, NotOnDemand> {
    let mut p = on_demand_layout(cluster, observed, nodes)?;
    p.changes = nodes
        .iter()
        .filter_map(|n| {
            let seen = observed.nodes.get(n)?;
            Some(Change::RemoveNode {
                site: seen.site.clone(),
                node: n.clone(),
            })
        })
        .collect();
    Ok(p)
}

/// The layout, once every one of `nodes` is an on-demand worker of it.
fn on_demand_layout(
    cluster: &Cluster,
    observed: &Observed,
    nodes: &BTreeSet<String>,
) -> Result<Plan, NotOnDemand> {
    let p = plan::layout(cluster, observed);
    match nodes
        .iter()
        .find(|n| p.node(n).is_none_or(|np| !np.on_demand))
    {
        Some(n) => Err(NotOnDemand {
            cluster: p.cluster.clone(),
            node: n.clone(),
        }),
        None => Ok(p),
    }
}

/// The node a per-node change is about.
fn change_node(c: &Change) -> Option<&str> {
    match c {
        Change::CreateNode { node, .. }
        | Change::AssignPublicIp { node, .. }
        | Change::AttachPublicIp { node, .. }
        | Change::AddAddressPairs { node, .. }
        | Change::ConfigureNode { node, .. }
        | Change::RemoveNode { node, .. } => Some(node),
        _ => None,
    }
}
