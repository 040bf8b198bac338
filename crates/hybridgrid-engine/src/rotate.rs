//! `rotate`: new keys for a running cluster with no tunnel lost — every relay's WireGuard key,
//! every pair's preshared key, the munge key — the same steps on every provider, which only runs
//! the node agent's two commands (`Nodes::agent_each`).
//!
//! The order is what keeps the tunnels: (1) every relay makes its next key and tells its public
//! half (`agent rotate-stage`; nothing changes on the device); (2) new preshared and munge keys
//! are made here and kept where `up` keeps them; (3) every node switches at once
//! (`agent rotate-switch`): a relay takes its next key and its peers' next keys and the pairs'
//! new preshared keys at once (one `wg set` on the kernel's device; the userspace device starts
//! again with them); a Slurm node takes the new munge key and restarts munged. Between two relays' switches a handshake may be refused (the other still has the old
//! keys), but the one that switches last sends its own handshake as its next packet leaves, to
//! a peer that already has every new key: a pair is down for the two switches' distance plus one
//! round trip, not WireGuard's 5 s retry. Slurm's daemons keep running; a message between them
//! that meets two munge keys during the switch is sent again by Slurm itself, so running jobs
//! go on. (4) The cluster is observed again: every relay must show its new key.
//!
//! A switch that fails part-way leaves the other nodes on their new keys: `up` reconnects the
//! relays (it plans the peers from the keys the relays now have), then `rotate` again gives every
//! node the same preshared and munge keys (a relay that had not switched keeps its staged key).

use std::collections::BTreeMap;
use std::time::Instant;

use base64::Engine as _;
use hybridgrid_core::keys::PublicKey;
use hybridgrid_core::model::Cluster;
use hybridgrid_core::node::KeySwitch;
use hybridgrid_core::plan::{NodePlan, Plan, SlurmRole};
use serde::{Deserialize, Serialize};

use crate::preshared::PresharedKeys;
use crate::provider::{AgentRun, Event, Nodes, Sink};
use crate::{EngineError, Provider, munge, preshared};

/// `rotate --json`'s version.
pub const ROTATE_REPORT_VERSION: u32 = 1;

/// Which keys `rotate` renews (`--wireguard`, `--preshared`, `--munge`; all when none is named).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renew {
    pub wireguard: bool,
    pub preshared: bool,
    pub munge: bool,
}

impl Renew {
    /// The keys named; all three when none is.
    pub fn from_flags(wireguard: bool, preshared: bool, munge: bool) -> Self {
        let all = !(wireguard || preshared || munge);
        Renew {
            wireguard: wireguard || all,
            preshared: preshared || all,
            munge: munge || all,
        }
    }
}

/// What `rotate` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotateReport {
    pub format_version: u32,
    /// Each relay's public key before and after (`--wireguard`).
    pub relays: Vec<RelayKey>,
    /// The pairs of relays that got a new preshared key.
    pub preshared_pairs: usize,
    /// The nodes that got the new munge key.
    pub munge_nodes: Vec<String>,
    /// From the first switch to the last node's answer.
    pub switch_seconds: f64,
    pub seconds: f64,
    /// `--when-due` with keys younger than `tunnel.rotate_every`: their ages; nothing renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_due: Option<crate::report::KeyAges>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayKey {
    pub node: String,
    pub before: Option<PublicKey>,
    pub after: PublicKey,
}

/// Renews the keys `renew` names on the running cluster (see the module's comment).
pub fn rotate(
    provider: &dyn Provider,
    cluster: &Cluster,
    renew: Renew,
    sink: Sink<'_>,
) -> Result<RotateReport, EngineError> {
    let start = Instant::now();
    let nodes = crate::nodes(provider, "rotate")?;
    let observed = crate::observe(provider, cluster)?;
    let plan = hybridgrid_core::reconcile::plan(cluster, &observed);
    require_converged(&plan)?;
    if renew.wireguard
        && let Some(pair) = plan.sites.iter().find_map(|s| s.pair.as_ref())
    {
        return Err(EngineError::RotatePair {
            pair: pair.identity.clone(),
        });
    }
    let running: Vec<&NodePlan> = plan
        .nodes
        .iter()
        .filter(|n| observed.nodes.contains_key(&n.name))
        .collect();
    let new_keys = match renew.wireguard {
        true => stage(nodes, &plan, &running, sink)?,
        false => BTreeMap::new(),
    };
    let keys_dir = nodes.keys_dir();
    let preshared = match renew.preshared && plan.tunnel.preshared_keys {
        true => Some(preshared::renew(&keys_dir, &plan)?),
        false => None,
    };
    let munge_key = match renew.munge {
        true => Some(munge::renew(&keys_dir)?),
        false => None,
    };
    let Switches { runs, munge_nodes } = switches(
        &plan,
        &running,
        &new_keys,
        preshared.as_ref(),
        munge_key.as_deref(),
    );
    let switched = Instant::now();
    sink(Event::Note(format!(
        "switching {} nodes at once",
        runs.len()
    )));
    check_all("switch", nodes.agent_each(&plan, runs))?;
    let switch_seconds = switched.elapsed().as_secs_f64();
    let relays = verify(provider, cluster, &plan, &new_keys)?;
    Ok(RotateReport {
        format_version: ROTATE_REPORT_VERSION,
        relays,
        preshared_pairs: preshared.map_or(0, |k| k.pair_count()),
        munge_nodes,
        switch_seconds,
        seconds: start.elapsed().as_secs_f64(),
        not_due: None,
    })
}

/// `rotate --when-due`: [`rotate`] once the oldest key it renews is `tunnel.rotate_every` old
/// (`status`'s key ages); before, nothing, and the report says how old the keys are. For a timer
/// on the machine that keeps the cluster's state (docs/keys.md).
pub fn rotate_when_due(
    provider: &dyn Provider,
    cluster: &Cluster,
    renew: Renew,
    sink: Sink<'_>,
) -> Result<RotateReport, EngineError> {
    if cluster.tunnel.rotate_every_s.is_none() {
        return Err(EngineError::RotateEveryUnset);
    }
    let status = crate::status(provider, cluster, crate::Probe::None)?;
    // Only the keys this rotation renews count: with `--munge` alone, old relay keys would make
    // it due at every tick of the timer.
    let ages = crate::report::KeyAges::new(
        status.keys.munge_s.filter(|_| renew.munge),
        status.keys.preshared_s.filter(|_| renew.preshared),
        status
            .tunnels
            .iter()
            .map(|t| t.key_age_s.filter(|_| renew.wireguard)),
        cluster.tunnel.rotate_every_s,
    );
    if ages.due {
        return rotate(provider, cluster, renew, sink);
    }
    Ok(RotateReport {
        format_version: ROTATE_REPORT_VERSION,
        relays: Vec::new(),
        preshared_pairs: 0,
        munge_nodes: Vec::new(),
        switch_seconds: 0.0,
        seconds: 0.0,
        not_due: Some(ages),
    })
}

/// Keys change only on a cluster that is as planned: a change still to make (a relay without
/// its peers, a node not configured) would be made by half a rotation.
fn require_converged(plan: &Plan) -> Result<(), EngineError> {
    if plan.changes.is_empty() {
        return Ok(());
    }
    Err(EngineError::RotateBeforeUp {
        changes: plan.changes.len(),
        first: plan.changes[0].summary(),
    })
}

/// Step 1: every running relay's next public key.
fn stage(
    nodes: &dyn Nodes,
    plan: &Plan,
    running: &[&NodePlan],
    sink: Sink<'_>,
) -> Result<BTreeMap<String, PublicKey>, EngineError> {
    let runs: Vec<AgentRun> = running
        .iter()
        .filter(|n| n.is_relay())
        .map(|n| AgentRun::new(&n.name, &["rotate-stage"], Vec::new()))
        .collect();
    sink(Event::Note(format!(
        "{} relays make their next keys",
        runs.len()
    )));
    check_all("stage", nodes.agent_each(plan, runs))?
        .into_iter()
        .map(|(node, out)| {
            let text = String::from_utf8_lossy(&out).trim().to_owned();
            PublicKey::from_base64(&text)
                .map(|k| (node.clone(), k))
                .map_err(|_| EngineError::RotateAnswer { node, answer: text })
        })
        .collect()
}

/// Step 3's input for every node that gets something, and the nodes that get the munge key.
struct Switches {
    runs: Vec<AgentRun>,
    munge_nodes: Vec<String>,
}

/// Step 3's input for every node that gets something: relays their configuration with the new
/// keys (and their pairs' preshared keys), Slurm nodes the munge key.
fn switches(
    plan: &Plan,
    running: &[&NodePlan],
    new_keys: &BTreeMap<String, PublicKey>,
    preshared: Option<&PresharedKeys>,
    munge_key: Option<&[u8]>,
) -> Switches {
    let munge_key = munge_key.map(|k| base64::engine::general_purpose::STANDARD.encode(k));
    let mut runs = Vec::new();
    let mut munge_nodes = Vec::new();
    for node in running {
        let mut config = plan.node_config(node);
        let relay_changes =
            config.wireguard.is_some() && (!new_keys.is_empty() || preshared.is_some());
        let munge_changes = munge_key.is_some() && config.slurm.role != SlurmRole::None;
        if !relay_changes && !munge_changes {
            continue;
        }
        if munge_changes {
            munge_nodes.push(node.name.clone());
        }
        if let Some(wg) = &mut config.wireguard {
            *wg = wg.with_new_keys(&node.name, new_keys);
        }
        let switch = KeySwitch {
            config,
            next_key: new_keys.contains_key(&node.name),
            preshared_keys: preshared.and_then(|k| k.for_node(node.mesh_name())),
            munge_key: munge_key.clone().filter(|_| munge_changes),
        };
        // A document of strings and numbers always serializes.
        let input = serde_json::to_vec(&switch).unwrap_or_default();
        runs.push(AgentRun::new(&node.name, &["rotate-switch"], input));
    }
    // Relays first: a provider that limits its sessions at once still switches them together.
    runs.sort_by_key(|r| !plan.node(&r.node).is_some_and(|n| n.is_relay()));
    Switches { runs, munge_nodes }
}

/// Every node's output, or the first node's failure.
fn check_all(
    step: &'static str,
    results: BTreeMap<String, Result<Vec<u8>, EngineError>>,
) -> Result<BTreeMap<String, Vec<u8>>, EngineError> {
    results
        .into_iter()
        .map(|(node, r)| {
            r.map(|out| (node.clone(), out))
                .map_err(|e| EngineError::RotateStep {
                    step,
                    node,
                    source: Box::new(e),
                })
        })
        .collect()
}

/// Step 4: the cluster observed again has every relay on its new key and nothing to change.
fn verify(
    provider: &dyn Provider,
    cluster: &Cluster,
    before: &Plan,
    new_keys: &BTreeMap<String, PublicKey>,
) -> Result<Vec<RelayKey>, EngineError> {
    let after = crate::plan(provider, cluster)?;
    if let Some(change) = after.changes.first() {
        return Err(EngineError::RotateLeftChanges {
            first: change.summary(),
        });
    }
    let mut relays = Vec::new();
    for (node, key) in new_keys {
        let old = before
            .node(node)
            .and_then(|n| n.wireguard.as_ref()?.public_key);
        let now = after
            .node(node)
            .and_then(|n| n.wireguard.as_ref()?.public_key);
        if now != Some(*key) {
            return Err(EngineError::RotateNotSeen { node: node.clone() });
        }
        relays.push(RelayKey {
            node: node.clone(),
            before: old,
            after: *key,
        });
    }
    Ok(relays)
}
