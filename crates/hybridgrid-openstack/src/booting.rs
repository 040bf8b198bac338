//! `up`'s wait for nodes to finish booting (cloud-init done, answering over the node channel),
//! and what it does for them meanwhile: the agent binary reaches each site's relay as soon as
//! the relay answers SSH, and the workers fetch it from their relay, so that configuring a
//! booted node no longer starts with the binary's transfer.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hybridgrid_core::diff::Change;
use hybridgrid_core::plan::Plan;
use hybridgrid_engine::{Event, Pending, PendingKind, Sink};

use crate::channel::{Channel, Target};
use crate::cluster_nodes::CHANNELS_AT_ONCE;
use crate::nodes::{self, AgentBinary};
use crate::provider::{OpenStack, lock};

/// How often `up` looks whether a booting node finished (one command on an open connection).
const BOOT_POLL: Duration = Duration::from_secs(1);
/// What cloud-init leaves when it is done with a boot, whatever the outcome.
const BOOT_FINISHED: &str = "test -f /var/lib/cloud/instance/boot-finished";

impl OpenStack {
    /// Nodes `up` could not configure yet (their `ConfigureNode` is still in the plan) are
    /// waited for until cloud-init finished on them and they answer over the channel, at most
    /// `boot_timeout`; meanwhile they get the agent ([`EarlyAgent`]). Whether any now answers
    /// (observe and configure again), and a note per node that does not.
    pub(crate) async fn await_channel(&self, plan: &Plan, sink: Sink<'_>) -> (bool, Vec<Pending>) {
        let pending: Vec<&str> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::ConfigureNode { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        if pending.is_empty() || self.opts.boot_timeout.is_zero() {
            return (false, Vec::new());
        }
        let channel = self.channel();
        let limit = self.opts.boot_timeout;
        sink(Event::Note(format!(
            "waiting for {} to finish booting and answer over SSH (at most {}s)",
            pending.join(", "),
            limit.as_secs()
        )));
        let early = EarlyAgent {
            agent: self.agent_binary().ok().flatten(),
            offers: Mutex::new(BTreeMap::new()),
        };
        let answers = futures::stream::iter(pending.into_iter().map(|node| {
            let (channel, early) = (&channel, &early);
            async move {
                let Some(target) = self.target(plan, node) else {
                    return (node, false);
                };
                let booted = await_boot(channel, plan, &target, (early, sink), limit).await;
                if let Some(waited) = booted {
                    sink(Event::Note(format!("{node} booted (waited {waited:.1}s)")));
                }
                (node, booted.is_some())
            }
        }))
        .buffer_unordered(CHANNELS_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
        for (relay, offer) in lock(&early.offers).iter() {
            if let Offer::Failed(why) = offer {
                sink(Event::Note(format!(
                    "{relay} could not offer the agent while booting ({why}): it gets it when \
                     configured"
                )));
            }
        }
        let again = answers.iter().any(|(_, ok)| *ok);
        let notes = answers
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| {
                let note = format!(
                    "{n} did not answer over SSH within {}s: it is configured by the next `up`",
                    limit.as_secs()
                );
                Pending::new(PendingKind::NoAnswer, n, note)
            })
            .collect();
        (again, notes)
    }
}

/// Polls `target` until cloud-init finished on it (the seconds waited) or `limit` passed
/// (`None`); once it answers SSH, it gets the agent early.
async fn await_boot(
    channel: &Channel,
    plan: &Plan,
    target: &Target,
    (early, sink): (&EarlyAgent, Sink<'_>),
    limit: Duration,
) -> Option<f64> {
    let t = Instant::now();
    let mut has_agent = early.agent.is_none();
    loop {
        let answer = channel.run(target, BOOT_FINISHED, b"").await;
        if answer.as_ref().is_ok_and(|o| o.code == 0) {
            return Some(t.elapsed().as_secs_f64());
        }
        if answer.is_ok() && !has_agent {
            has_agent = early.deliver(channel, plan, target, sink).await;
        }
        if t.elapsed() >= limit {
            return None;
        }
        // Cheap once the node's SSH connection is up (ControlMaster): the wait ends within a
        // second of cloud-init's end.
        tokio::time::sleep(BOOT_POLL).await;
    }
}

/// How far a relay got with offering the agent on its site's network while booting.
enum Offer {
    Offered(std::net::Ipv4Addr),
    Failed(String),
}

/// The agent for nodes still booting: a relay gets it over the channel and offers it
/// ([`nodes::offer_agent_on_relay`]); a worker fetches it from its relay once that offers it.
/// What fails here is only left to the node's configuration, which does the same and reports.
struct EarlyAgent {
    agent: Option<AgentBinary>,
    /// By relay.
    offers: Mutex<BTreeMap<String, Offer>>,
}

impl EarlyAgent {
    /// Whether `target` is done with its early agent (it has it, or it will not get it here);
    /// `false` for a worker whose relay does not offer it yet. Says what came from where.
    async fn deliver(
        &self,
        channel: &Channel,
        plan: &Plan,
        target: &Target,
        sink: Sink<'_>,
    ) -> bool {
        let (Some(agent), Some(node)) = (&self.agent, plan.node(&target.node)) else {
            return true;
        };
        let Some(relay) = plan.relay_of(&node.site) else {
            return true;
        };
        if node.name == relay.name {
            let offer =
                match nodes::offer_agent_on_relay(channel, target, relay.lan_ip, agent).await {
                    Ok(_) => {
                        sink(Event::Note(format!(
                            "{} has the agent {} and offers it to its site's workers (while it \
                             boots)",
                            relay.name,
                            &agent.sha256[..12]
                        )));
                        Offer::Offered(relay.lan_ip)
                    }
                    Err(e) => Offer::Failed(hybridgrid_core::error_chain(&e)),
                };
            lock(&self.offers).insert(relay.name.clone(), offer);
            return true;
        }
        let from = match lock(&self.offers).get(&relay.name) {
            Some(Offer::Offered(ip)) => *ip,
            Some(Offer::Failed(_)) => return true,
            None => return false,
        };
        if let Ok(Some(nodes::Sent::FromRelay)) =
            nodes::fetch_agent_from_relay(channel, target, agent, from).await
        {
            sink(Event::Note(format!(
                "{} got the agent {} from its relay (while it boots)",
                node.name,
                &agent.sha256[..12]
            )));
        }
        true
    }
}
