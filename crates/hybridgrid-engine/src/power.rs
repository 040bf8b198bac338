//! Slurm's power saving through the engine: the power service's requests (wake or remove
//! on-demand workers) become a plan whose changes touch only those nodes, applied by the
//! provider's own `apply` — the same code that makes a worker in `up`.

use std::collections::BTreeSet;

use hybridgrid_core::model::Cluster;
use hybridgrid_core::power::{PowerReply, PowerRequest, PowerVerb};
use hybridgrid_core::reconcile;

use crate::EngineError;
use crate::provider::{Provider, Sink};

/// Carries out `request`. Nodes that could not be made are removed again (nothing half-made
/// stays) and reported failed with the provider's reason; the reply names every node.
pub fn power(
    provider: &dyn Provider,
    cluster: &Cluster,
    request: &PowerRequest,
    sink: Sink<'_>,
) -> Result<PowerReply, EngineError> {
    let nodes: BTreeSet<String> = request.nodes.iter().cloned().collect();
    let observed = crate::observe(provider, cluster)?;
    let plan = match request.verb {
        PowerVerb::Resume => reconcile::wake(cluster, &observed, &nodes),
        PowerVerb::Suspend => reconcile::sleep(cluster, &observed, &nodes),
    }
    .map_err(EngineError::provider)?;
    let Err(e) = provider.apply(&plan, &observed, &plan.changes, sink) else {
        return Ok(PowerReply {
            done: nodes.into_iter().collect(),
            ..PowerReply::default()
        });
    };
    let reason = hybridgrid_core::error_chain(&e);
    if request.verb == PowerVerb::Suspend {
        return Ok(PowerReply::all_failed(&nodes, &reason));
    }
    // Which nodes came up all the same: those whose agent applied their configuration.
    let seen = crate::observe(provider, cluster)?;
    let (done, failed): (Vec<String>, Vec<String>) = nodes
        .into_iter()
        .partition(|n| seen.nodes.get(n).is_some_and(|o| o.applied.is_some()));
    let failed: BTreeSet<String> = failed.into_iter().collect();
    let cleanup = reconcile::sleep(cluster, &seen, &failed).map_err(EngineError::provider)?;
    provider.apply(&cleanup, &seen, &cleanup.changes, sink)?;
    Ok(PowerReply {
        done,
        ..PowerReply::all_failed(&failed, &reason)
    })
}
