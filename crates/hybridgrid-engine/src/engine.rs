//! The rounds: observe → plan → apply, the same for every provider.

use std::collections::BTreeSet;
use std::time::Instant;

use hybridgrid_core::diff::{Change, Observed};
use hybridgrid_core::model::Cluster;
use hybridgrid_core::plan::Plan;
use hybridgrid_core::reconcile;

use crate::EngineError;
use crate::doctor::{DOCTOR_FORMAT_VERSION, DoctorReport, diagnose};
use crate::path::{PathReport, trace};
use crate::provider::{Event, Nodes, Probe, Provider, Sink};
use crate::report::{StatusReport, UpReport};

/// Rounds `up` runs at most. A cluster converges in two or three (see ARCHITECTURE.md): the
/// first creates, the next ones complete what needs keys and public IPs that only exist then.
pub const MAX_ROUNDS: usize = 6;

pub const UP_REPORT_VERSION: u32 = 1;

/// The plan against what exists: what `plan` prints and `up`'s first round applies.
pub fn plan(provider: &dyn Provider, cluster: &Cluster) -> Result<Plan, EngineError> {
    Ok(reconcile::plan(cluster, &observe(provider, cluster)?))
}

/// What exists of `cluster`, as the provider reads it from the live cloud.
pub fn observe(provider: &dyn Provider, cluster: &Cluster) -> Result<Observed, EngineError> {
    provider.observe(&reconcile::layout(cluster))
}

/// The provider's node access for `command`, or the error that it has none.
pub fn nodes<'p>(
    provider: &'p dyn Provider,
    command: &'static str,
) -> Result<&'p dyn Nodes, EngineError> {
    provider
        .nodes()
        .ok_or_else(|| EngineError::unsupported(provider.name(), command, ""))
}

/// Creates or changes everything until a round finds no change, then lets the provider settle.
pub fn up(
    provider: &dyn Provider,
    cluster: &Cluster,
    sink: Sink<'_>,
) -> Result<UpReport, EngineError> {
    let plan_of = |observed: &Observed| Ok(reconcile::plan(cluster, observed));
    converge(provider, &reconcile::layout(cluster), &plan_of, sink)
}

/// The plan a round applies, made from what that round observed.
pub type PlanOf<'a> = dyn Fn(&Observed) -> Result<Plan, EngineError> + 'a;

/// `up`'s rounds for any plan: observe, plan with `plan_of`, apply, until a round finds no
/// change; then the provider settles (servers boot), and what settling made possible is
/// tried once more. The power service converges the same way on the plans that wake nodes.
pub fn converge(
    provider: &dyn Provider,
    layout: &Plan,
    plan_of: &PlanOf<'_>,
    sink: Sink<'_>,
) -> Result<UpReport, EngineError> {
    let start = Instant::now();
    let mut report = UpReport {
        format_version: UP_REPORT_VERSION,
        provider: provider.name().to_owned(),
        ..UpReport::default()
    };
    // Changes the provider said it can make only in part: not tried again this run.
    let mut partial: BTreeSet<String> = BTreeSet::new();
    let mut settled_once = false;
    loop {
        let observed = provider.observe(layout)?;
        let plan = plan_of(&observed)?;
        let todo: Vec<Change> = plan
            .changes
            .iter()
            .filter(|c| !partial.contains(&c.summary()))
            .cloned()
            .collect();
        if todo.is_empty() {
            let settled = provider.settle(&plan, sink)?;
            if settled.observe_again && !settled_once {
                settled_once = true;
                // What the provider waited for may have made those changes possible (nodes
                // that booted meanwhile): they are tried again.
                partial.clear();
                report.partial.clear();
                continue;
            }
            report.notes = settled.pending.iter().map(|p| p.note.clone()).collect();
            report.pending = settled.pending;
            break;
        }
        if report.rounds.len() == MAX_ROUNDS {
            return Err(EngineError::NotConverged {
                rounds: MAX_ROUNDS,
                remaining: todo
                    .iter()
                    .map(Change::summary)
                    .collect::<Vec<_>>()
                    .join(" | "),
            });
        }
        sink(Event::Round {
            round: report.rounds.len() + 1,
            changes: todo.len(),
            seconds: start.elapsed().as_secs_f64(),
        });
        let applied = provider.apply(&plan, &observed, &todo, sink)?;
        report.rounds.push(todo);
        for (change, why) in applied.partial {
            let summary = change.summary();
            report.partial.push(format!("{summary}: {why}"));
            partial.insert(summary);
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Nodes, tunnels and reachability of the cluster as it runs.
pub fn status(
    provider: &dyn Provider,
    cluster: &Cluster,
    probe: Probe,
) -> Result<StatusReport, EngineError> {
    let plan = plan(provider, cluster)?;
    let mut report = provider.status(&plan, probe)?;
    if let Some(nodes) = provider.nodes() {
        let keys_dir = nodes.keys_dir();
        let age = |file: &str| crate::state::age_s(&keys_dir.join(file));
        report.keys = crate::report::KeyAges::new(
            age(crate::munge::KEY_FILE),
            age(crate::preshared::KEYS_FILE),
            report.tunnels.iter().map(|t| t.key_age_s),
            plan.tunnel.rotate_every_s,
        );
    }
    Ok(report)
}

/// `doctor`: the provider's facts of the live cluster, diagnosed.
pub fn doctor(provider: &dyn Provider, cluster: &Cluster) -> Result<DoctorReport, EngineError> {
    let nodes = nodes(provider, "doctor")?;
    let plan = plan(provider, cluster)?;
    let facts = nodes.doctor_facts(&plan)?;
    let findings = diagnose(&facts);
    Ok(DoctorReport {
        format_version: DOCTOR_FORMAT_VERSION,
        cluster: facts.cluster.clone(),
        healthy: findings.is_empty(),
        findings,
        facts,
    })
}

/// `doctor --path SRC DST`: doctor's facts and findings plus the flow's own, followed hop by hop.
pub fn doctor_path(
    provider: &dyn Provider,
    cluster: &Cluster,
    src: &str,
    dst: &str,
) -> Result<PathReport, EngineError> {
    let nodes = nodes(provider, "doctor --path")?;
    let plan = plan(provider, cluster)?;
    for n in [src, dst] {
        if plan.node(n).is_none() {
            return Err(EngineError::NoSuchNode(n.to_owned()));
        }
    }
    let facts = nodes.doctor_facts(&plan)?;
    let findings = diagnose(&facts);
    let pf = nodes.path_facts(&plan, src, dst)?;
    trace(&plan, &facts, &findings, &pf, src, dst)
        .ok_or_else(|| EngineError::NoSuchNode(format!("{src} or {dst} (no path between them)")))
}
