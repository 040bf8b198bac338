//! The engine against a provider double: an in-memory cloud that applies each change to what
//! it observes, as a real provider's cloud would.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;

use hybridgrid_core::diff::{Change, Observed, ObservedNode, ObservedSite};
use hybridgrid_core::keys::PrivateKey;
use hybridgrid_core::model::{self, Cluster};
use hybridgrid_core::plan::Plan;
use hybridgrid_engine::{
    Applied, Command, DownReport, EngineError, Event, NodeStatus, Nodes, Probe, Provider, Settled,
    Sink, StatusReport,
};

/// A cloud in memory. Keys appear only once a node exists, public IPs only once assigned: the
/// same order a real cloud imposes, so `up` needs more than one round.
#[derive(Default)]
struct Double {
    cloud: Mutex<Observed>,
    applied: Mutex<Vec<Vec<Change>>>,
    /// Changes whose summary starts with this are made only in part.
    partial_prefix: Option<&'static str>,
    /// Applies nothing at all (a provider that is broken).
    inert: bool,
    /// A node created in a round cannot be configured in that round: it boots until the next
    /// `settle` (a cloud server), or never (`boots_never`).
    boots: bool,
    boots_never: bool,
    booting: Mutex<Vec<String>>,
}

impl Provider for Double {
    fn name(&self) -> &'static str {
        "double"
    }
    fn observe(&self, _layout: &Plan) -> Result<Observed, EngineError> {
        Ok(self.cloud.lock().unwrap().clone())
    }
    fn apply(
        &self,
        plan: &Plan,
        _observed: &Observed,
        changes: &[Change],
        _sink: Sink<'_>,
    ) -> Result<Applied, EngineError> {
        self.applied.lock().unwrap().push(changes.to_vec());
        let mut out = Applied::default();
        if self.inert {
            return Ok(out);
        }
        let mut cloud = self.cloud.lock().unwrap();
        let site = |c: &mut Observed, s: &str| -> ObservedSite {
            c.sites.get(s).cloned().unwrap_or_default()
        };
        for change in changes {
            let booting = match change {
                Change::ConfigureNode { node, .. } => self.booting.lock().unwrap().contains(node),
                _ => false,
            };
            if booting {
                out.partial.push((change.clone(), "still booting".into()));
                continue;
            }
            if self
                .partial_prefix
                .is_some_and(|p| change.summary().starts_with(p))
            {
                out.partial
                    .push((change.clone(), "the double cannot".into()));
                continue;
            }
            match change {
                Change::CreateNetwork { site: s } => {
                    let mut o = site(&mut cloud, s);
                    o.network = true;
                    cloud.sites.insert(s.clone(), o);
                }
                Change::CreateSecurityGroup { site: s, group } => {
                    let mut o = site(&mut cloud, s);
                    o.security_groups.entry(group.clone()).or_default();
                    cloud.sites.insert(s.clone(), o);
                }
                Change::AddRule {
                    site: s,
                    group,
                    rule,
                } => {
                    let mut o = site(&mut cloud, s);
                    o.security_groups
                        .entry(group.clone())
                        .or_default()
                        .push(rule.clone());
                    cloud.sites.insert(s.clone(), o);
                }
                Change::CreateNode {
                    site: s,
                    node,
                    role,
                } => {
                    if self.boots {
                        self.booting.lock().unwrap().push(node.clone());
                    }
                    cloud.nodes.insert(
                        node.clone(),
                        ObservedNode {
                            site: s.clone(),
                            public_ip: None,
                            public_key: role
                                .is_relay()
                                .then(|| PrivateKey::from_seed(node).public_key()),
                            applied: None,
                            measured: None,
                            instance: None,
                        },
                    );
                }
                Change::AssignPublicIp { node, .. } => {
                    let used = cloud
                        .nodes
                        .values()
                        .filter(|n| n.public_ip.is_some())
                        .count();
                    if let Some(n) = cloud.nodes.get_mut(node) {
                        n.public_ip = Some(Ipv4Addr::new(203, 0, 113, 10 + used as u8));
                    }
                }
                Change::AddAddressPairs {
                    site: s,
                    node,
                    pairs,
                } => {
                    let mut o = site(&mut cloud, s);
                    o.allowed_address_pairs
                        .entry(node.clone())
                        .or_default()
                        .extend(pairs);
                    cloud.sites.insert(s.clone(), o);
                }
                Change::ConfigureNode { node, .. } => {
                    let config = plan.node_config(plan.node(node).unwrap());
                    if let Some(n) = cloud.nodes.get_mut(node) {
                        n.applied = Some(config);
                    }
                }
                Change::RemoveRule {
                    site: s,
                    group,
                    rule,
                } => {
                    if let Some(g) = cloud
                        .sites
                        .get_mut(s)
                        .and_then(|o| o.security_groups.get_mut(group))
                    {
                        g.retain(|r| r.key() != rule.key());
                    }
                }
                Change::RemoveNode { node, site: s } => {
                    cloud.nodes.remove(node);
                    if let Some(o) = cloud.sites.get_mut(s) {
                        o.allowed_address_pairs.remove(node);
                    }
                }
                Change::RemoveSecurityGroup { site: s, group } => {
                    if let Some(o) = cloud.sites.get_mut(s) {
                        o.security_groups.remove(group);
                    }
                }
                Change::RemoveNetwork { site: s } => {
                    cloud.sites.remove(s);
                }
                other => panic!("the double does not know {other:?}"),
            }
        }
        Ok(out)
    }
    /// What booted answers now: observe again.
    fn settle(&self, _plan: &Plan, _sink: Sink<'_>) -> Result<Settled, EngineError> {
        let mut booting = self.booting.lock().unwrap();
        let booted = !booting.is_empty() && !self.boots_never;
        if booted {
            booting.clear();
        }
        Ok(Settled {
            observe_again: booted,
            ..Settled::default()
        })
    }
    fn down(&self, _sink: Sink<'_>) -> Result<DownReport, EngineError> {
        *self.cloud.lock().unwrap() = Observed::default();
        Ok(DownReport::default())
    }
    /// Every node that exists in the double's cloud is up; nothing is probed.
    fn status(&self, plan: &Plan, _probe: Probe) -> Result<StatusReport, EngineError> {
        let cloud = self.cloud.lock().unwrap();
        let nodes = plan
            .nodes
            .iter()
            .map(|n| NodeStatus::of(n, cloud.nodes.contains_key(&n.name), None))
            .collect();
        Ok(StatusReport::new(
            &plan.cluster,
            nodes,
            Vec::new(),
            Vec::new(),
        ))
    }
    /// The double cannot reach its nodes.
    fn nodes(&self) -> Option<&dyn Nodes> {
        None
    }

    fn stores(&self) -> Option<&dyn hybridgrid_engine::Stores> {
        None
    }
}

fn cluster(file: &str) -> Cluster {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/valid")
        .join(file);
    model::load(&path).unwrap().cluster
}

fn quiet(_: Event) {}

#[test]
fn plan_lists_exactly_what_up_applies_in_its_first_round() {
    for file in ["two-sites.yaml", "three-sites.yaml", "five-sites.yaml"] {
        let c = cluster(file);
        let double = Double::default();
        let planned = hybridgrid_engine::plan(&double, &c).unwrap().changes;
        assert!(!planned.is_empty());
        let report = hybridgrid_engine::up(&double, &c, &quiet).unwrap();
        let applied = double.applied.lock().unwrap().clone();
        assert_eq!(applied[0], planned, "{file}");
        assert_eq!(report.rounds[0], planned, "{file}");
        // Keys and public IPs exist only after round 1: peers and /32 rules follow.
        assert!(report.rounds.len() >= 2, "{file}: {:?}", report.rounds);
        // Then the cluster is as planned: another plan is empty, another up applies nothing.
        assert_eq!(
            hybridgrid_engine::plan(&double, &c).unwrap().changes,
            Vec::new()
        );
        let again = hybridgrid_engine::up(&double, &c, &quiet).unwrap();
        assert_eq!(again.change_count(), 0, "{file}: {:?}", again.rounds);
    }
}

#[test]
fn drift_in_the_cloud_is_a_change_that_plan_shows_and_up_applies() {
    let c = cluster("two-sites.yaml");
    let double = Double::default();
    hybridgrid_engine::up(&double, &c, &quiet).unwrap();
    // A rule removed by hand.
    let removed = {
        let mut cloud = double.cloud.lock().unwrap();
        let site = cloud.sites.values_mut().next().unwrap();
        let rules = site
            .security_groups
            .values_mut()
            .find(|r| !r.is_empty())
            .unwrap();
        rules.remove(0)
    };
    let planned = hybridgrid_engine::plan(&double, &c).unwrap().changes;
    assert!(
        matches!(planned.as_slice(), [Change::AddRule { rule, .. }] if *rule == removed),
        "{planned:?}"
    );
    let report = hybridgrid_engine::up(&double, &c, &quiet).unwrap();
    assert_eq!(report.rounds, vec![planned]);
}

#[test]
fn a_change_made_in_part_is_reported_and_not_retried() {
    let c = cluster("two-sites.yaml");
    let double = Double {
        partial_prefix: Some("~ "),
        ..Double::default()
    };
    let report = hybridgrid_engine::up(&double, &c, &quiet).unwrap();
    assert!(!report.partial.is_empty());
    assert!(
        report
            .partial
            .iter()
            .all(|p| p.starts_with("~ ") && p.ends_with("the double cannot"))
    );
    // Each ConfigureNode was tried once per distinct summary, never in a loop to MAX_ROUNDS.
    assert!(report.rounds.len() < hybridgrid_engine::MAX_ROUNDS);
}

#[test]
fn a_provider_that_makes_no_progress_is_an_error_naming_what_is_left() {
    let c = cluster("two-sites.yaml");
    let double = Double {
        inert: true,
        ..Double::default()
    };
    let e = hybridgrid_engine::up(&double, &c, &quiet).unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with(&format!(
        "the cluster did not settle after {} rounds",
        hybridgrid_engine::MAX_ROUNDS
    )));
    assert!(text.contains("network, subnet and router"), "{text}");
}

#[test]
fn an_unsupported_command_names_the_provider() {
    let c = cluster("two-sites.yaml");
    let double = Double::default();
    let e = hybridgrid_engine::doctor(&double, &c).unwrap_err();
    assert_eq!(
        e.to_string(),
        "provider double does not support `doctor` yet"
    );
    assert!(!hybridgrid_engine::supports(&double, Command::Exec));
    assert!(hybridgrid_engine::supports(&double, Command::Status));
}

/// The fixture's two sites, giessen with a group `od` of one on-demand worker, brought up.
fn with_an_on_demand_worker(double: &Double) -> Cluster {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/valid/two-sites.yaml"),
    )
    .unwrap()
    .replace(
        "datasets:",
        "      - { name: od, count: 1, on_demand: true, cpus: 1, memory: 512 }\ndatasets:",
    );
    let (c, d) = model::validate_text(&text);
    let c = c.unwrap_or_else(|| panic!("{d:?}"));
    hybridgrid_engine::up(double, &c, &quiet).unwrap();
    c
}

fn od_node(c: &Cluster) -> String {
    let plan = hybridgrid_core::reconcile::layout(c);
    plan.nodes
        .iter()
        .find(|n| n.on_demand)
        .unwrap()
        .name
        .clone()
}

#[test]
fn a_woken_node_that_boots_between_rounds_is_made_and_configured() {
    let double = Double {
        boots: true,
        ..Double::default()
    };
    let c = with_an_on_demand_worker(&double);
    let node = od_node(&c);
    assert!(
        !double.cloud.lock().unwrap().nodes.contains_key(&node),
        "up made {node}"
    );
    let request = hybridgrid_core::power::PowerRequest {
        verb: hybridgrid_core::power::PowerVerb::Resume,
        nodes: vec![node.clone()],
    };
    let reply = hybridgrid_engine::power::power(&double, &c, &request, &quiet).unwrap();
    assert_eq!(reply.done, vec![node.clone()], "{reply:?}");
    let cloud = double.cloud.lock().unwrap();
    assert!(
        cloud.nodes[&node].applied.is_some(),
        "configured after its boot"
    );
}

#[test]
fn a_woken_node_that_never_answers_fails_with_the_reason_and_is_removed() {
    let double = Double {
        boots: true,
        boots_never: true,
        ..Double::default()
    };
    let c = with_an_on_demand_worker(&double);
    let node = od_node(&c);
    let request = hybridgrid_core::power::PowerRequest {
        verb: hybridgrid_core::power::PowerVerb::Resume,
        nodes: vec![node.clone()],
    };
    let reply = hybridgrid_engine::power::power(&double, &c, &request, &quiet).unwrap();
    assert!(reply.done.is_empty(), "{reply:?}");
    assert!(reply.failed[&node].contains("still booting"), "{reply:?}");
    assert!(
        !double.cloud.lock().unwrap().nodes.contains_key(&node),
        "{node} left behind"
    );
}
