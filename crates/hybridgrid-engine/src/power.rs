//! Slurm's power saving through the engine: the power service's requests (wake or remove
//! on-demand workers) become a plan whose changes touch only those nodes, applied by the
//! provider's own `apply` — the same code that makes a worker in `up`.

use std::collections::BTreeSet;

use hybridgrid_core::diff::Observed;
use hybridgrid_core::model::Cluster;
use hybridgrid_core::plan::Plan;
use hybridgrid_core::power::{PowerReply, PowerRequest, PowerVerb};
use hybridgrid_core::reconcile;

use crate::EngineError;
use crate::provider::{Provider, Sink};
use crate::report::UpReport;

/// Carries out `request`: wakes nodes with `up`'s rounds on the plans that touch only them
/// (a cloud server boots between two rounds), or removes them. Nodes that could not be made
/// are removed again (nothing half-made stays) and reported failed with the provider's reason;
/// the reply names every node.
pub fn power(
    provider: &dyn Provider,
    cluster: &Cluster,
    request: &PowerRequest,
    sink: Sink<'_>,
) -> Result<PowerReply, EngineError> {
    let nodes: BTreeSet<String> = request.nodes.iter().cloned().collect();
    let layout = reconcile::layout(cluster);
    let result = match request.verb {
        PowerVerb::Resume => {
            let wake =
                |o: &Observed| reconcile::wake(cluster, o, &nodes).map_err(EngineError::provider);
            crate::converge(provider, &layout, &wake, sink)
        }
        PowerVerb::Suspend => {
            let observed = provider.observe(&layout)?;
            let plan =
                reconcile::sleep(cluster, &observed, &nodes).map_err(EngineError::provider)?;
            provider
                .apply(&plan, &observed, &plan.changes, sink)
                .map(|_| Default::default())
        }
    };
    let reason = match result {
        Ok(report) => unfinished(&report, &nodes),
        Err(e) => Some(hybridgrid_core::error_chain(&e)),
    };
    let Some(reason) = reason else {
        return Ok(PowerReply {
            done: nodes.into_iter().collect(),
            ..PowerReply::default()
        });
    };
    if request.verb == PowerVerb::Suspend {
        return Ok(PowerReply::all_failed(&nodes, &reason));
    }
    remove_failed(provider, cluster, &layout, nodes, &reason, sink)
}

/// What a wake-up's rounds left undone about `nodes` (a change the provider could make only in
/// part, a node that never answered), in words; `None`: nothing.
fn unfinished(report: &UpReport, nodes: &BTreeSet<String>) -> Option<String> {
    let notes: Vec<String> = report
        .partial
        .iter()
        .cloned()
        .chain(
            report
                .pending
                .iter()
                .filter(|p| nodes.contains(&p.node))
                .map(|p| p.note.clone()),
        )
        .collect();
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// After a wake-up that went wrong: which nodes came up all the same (their agent applied
/// their configuration); the others are removed again and reported with `reason`.
fn remove_failed(
    provider: &dyn Provider,
    cluster: &Cluster,
    layout: &Plan,
    nodes: BTreeSet<String>,
    reason: &str,
    sink: Sink<'_>,
) -> Result<PowerReply, EngineError> {
    let seen = provider.observe(layout)?;
    let up_to_date = |n: &String| {
        let wake = reconcile::wake(cluster, &seen, &BTreeSet::from([n.clone()]));
        seen.nodes.get(n).is_some_and(|o| o.applied.is_some())
            && wake.is_ok_and(|p| p.changes.is_empty())
    };
    let (done, failed): (Vec<String>, Vec<String>) = nodes.into_iter().partition(up_to_date);
    let failed: BTreeSet<String> = failed.into_iter().collect();
    let cleanup = reconcile::sleep(cluster, &seen, &failed).map_err(EngineError::provider)?;
    provider.apply(&cleanup, &seen, &cleanup.changes, sink)?;
    Ok(PowerReply {
        done,
        ..PowerReply::all_failed(&failed, reason)
    })
}
