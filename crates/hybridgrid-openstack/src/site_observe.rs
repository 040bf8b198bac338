//! What exists of a site ([`SiteOps::observe`]), and small helpers that read Neutron's and
//! Nova's answers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use hybridgrid_core::diff::{ObservedNode, ObservedSite};
use hybridgrid_core::observed::{FlavorSize, ObservedVirtualAddress};
use hybridgrid_core::plan::{Plan, Role};
use ipnet::Ipv4Net;
use serde_json::Value;

use crate::api::{NET, NOVA, missing, need_id};
use crate::error::Result;
use crate::ledger::LedgerData;
use crate::site::{FoundServer, NetIds, SiteOps, parse_net};
use crate::site_groups::rule_of;

/// What [`SiteOps::observe`] finds of one node: its observed state (when its server exists),
/// its port's address pairs (when it has a port), and its floating IP when it has no server.
type NodeSeen = (
    String,
    Option<ObservedNode>,
    Option<Vec<Ipv4Net>>,
    Option<Ipv4Addr>,
);

impl SiteOps {
    /// The sizes of the flavors the cluster file names for this site (the plan sizes workers
    /// without `cpus` or `memory` by them). A flavor the cloud does not list is left out:
    /// `validate --online` and the server's create name it.
    async fn flavor_sizes(&self) -> Result<BTreeMap<String, FlavorSize>> {
        let named = std::iter::once(&self.site.gateway.flavor)
            .chain(self.site.workers.iter().map(|g| &g.spec.flavor))
            .flatten();
        let all = self.flavors().await?;
        let mut sizes = BTreeMap::new();
        for name in named {
            let Some(f) = crate::site::find_by_name_or_id(&all, name) else {
                continue;
            };
            let what = format!("flavor {name}");
            let vcpus = f["vcpus"].as_u64().and_then(|v| u32::try_from(v).ok());
            let size = FlavorSize {
                vcpus: vcpus.ok_or_else(|| missing(NOVA, &what, "vcpus"))?,
                ram_mib: f["ram"]
                    .as_u64()
                    .ok_or_else(|| missing(NOVA, &what, "ram"))?,
            };
            sizes.insert(name.clone(), size);
        }
        Ok(sizes)
    }

    /// The names of this site's security groups: the plan's, or for a site that left the
    /// file, the names its plan had.
    fn group_names(&self, plan: &Plan) -> Vec<String> {
        match plan.site(&self.site.name) {
            Some(p) => p.security_groups.iter().map(|g| g.name.clone()).collect(),
            None => ["nodes", "gateway"]
                .iter()
                .map(|g| format!("{}-{}-{g}", self.cluster, self.site.name))
                .collect(),
        }
    }

    /// What exists of this site: network, groups and rules, nodes with their public IPs, pairs
    /// and keys, a relay pair's virtual address.
    /// The third part: relays (and a pair's identity) whose floating IP is allocated but not
    /// (yet) on their port.
    pub async fn observe(
        &self,
        plan: &Plan,
    ) -> Result<(
        ObservedSite,
        BTreeMap<String, ObservedNode>,
        BTreeMap<String, Ipv4Addr>,
    )> {
        let relays: Vec<String> = plan
            .nodes
            .iter()
            .filter(|n| n.site == self.site.name && n.is_relay())
            .map(|n| n.name.clone())
            .collect();
        let planned = plan
            .site(&self.site.name)
            .and_then(|s| s.pair.as_ref())
            .map(|p| p.identity.clone());
        // A pair goes by the site's gateway name: a virtual address left from a pair the file
        // no longer has is found too (and removed).
        let identity = hybridgrid_core::plan::relay_name(&self.site.name, Role::Gateway);
        let group_names = self.group_names(plan);
        // Independent lookups, concurrently.
        let ((ids, network_ready), groups, unattached, servers, flavors) = tokio::try_join!(
            self.network_state(),
            self.security_groups(&group_names),
            self.unattached_fips(relays.iter().chain(planned.as_ref())),
            self.servers(false),
            self.flavor_sizes()
        )?;
        let mut site = ObservedSite {
            network: network_ready,
            flavors,
            ..Default::default()
        };
        for (name, g) in groups {
            if self.tagged(&g) {
                let rules = g["security_group_rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(rule_of)
                    .collect();
                site.security_groups.insert(name, rules);
            }
        }
        let mut nodes = BTreeMap::new();
        let mut unattached = unattached;
        let Some(ids) = ids else {
            return Ok((site, nodes, unattached));
        };
        if let Some(seen) = self.virtual_address(&identity, &ids).await? {
            site.virtual_addresses.insert(identity, seen);
        }
        for (node, observed, pairs, reserved) in self.observe_nodes(&ids, &servers, &relays).await?
        {
            if let Some(ip) = reserved {
                unattached.insert(node.clone(), ip);
            }
            if let Some(p) = pairs {
                site.allowed_address_pairs.insert(node.clone(), p);
            }
            if let Some(o) = observed {
                nodes.insert(node, o);
            }
        }
        Ok((site, nodes, unattached))
    }

    /// The floating IPs allocated for `names` (by description) and on no port: reserved for
    /// them. One listing of the project's floating IPs.
    async fn unattached_fips(
        &self,
        names: impl Iterator<Item = &String>,
    ) -> Result<BTreeMap<String, Ipv4Addr>> {
        let all = self.project_fips().await?;
        let mut out = BTreeMap::new();
        for name in names {
            let description = self.fip_name(name);
            for f in all
                .iter()
                .filter(|f| f["description"].as_str() == Some(description.as_str()))
            {
                if f["port_id"].is_null()
                    && let Ok(ip) = self.fip_address(name, f)
                {
                    out.insert(name.clone(), ip);
                }
            }
        }
        Ok(out)
    }

    /// A relay pair's virtual address as its port holds it, with the floating IP on it.
    async fn virtual_address(
        &self,
        identity: &str,
        ids: &NetIds,
    ) -> Result<Option<ObservedVirtualAddress>> {
        let Some(port) = self.find_vip_port(identity, &ids.net).await? else {
            return Ok(None);
        };
        let address = port["fixed_ips"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|f| f["ip_address"].as_str()?.parse().ok());
        let Some(address) = address else {
            return Ok(None);
        };
        let (public_ip, _) = self.port_state(identity, &port).await?;
        Ok(Some(ObservedVirtualAddress { address, public_ip }))
    }

    /// Every node with a server, and the relays even before their server exists (their ports'
    /// pairs and floating IPs matter already), concurrently.
    async fn observe_nodes(
        &self,
        ids: &NetIds,
        servers: &[FoundServer],
        relays: &[String],
    ) -> Result<Vec<NodeSeen>> {
        let ledger = self.ledger.snapshot();
        let mut names: BTreeSet<String> = servers.iter().map(|s| s.node.clone()).collect();
        names.extend(relays.iter().cloned());
        let futs = names.iter().map(|node| {
            let srv = servers.iter().find(|s| &s.node == node);
            let is_relay = relays.contains(node);
            self.observe_node(node, srv, is_relay, ids, &ledger)
        });
        futures::future::join_all(futs).await.into_iter().collect()
    }

    /// One node: its port's floating IP and address pairs, its key (a relay's from its
    /// console, once), and what it applies: its user data merged with what its metadata
    /// delivers.
    async fn observe_node(
        &self,
        node: &String,
        srv: Option<&FoundServer>,
        is_relay: bool,
        ids: &NetIds,
        ledger: &LedgerData,
    ) -> Result<NodeSeen> {
        let port = self
            .node_port(node, srv.map(|s| s.id.as_str()), &ids.net)
            .await?;
        let (public_ip, pairs) = match &port {
            Some(p) => {
                let (ip, pairs) = self.port_state(node, p).await?;
                (ip, Some(pairs))
            }
            None => (None, None),
        };
        let mut key = ledger.public_keys.get(node).cloned();
        if key.is_none()
            && is_relay
            && let Some(srv) = srv.filter(|s| s.status == "ACTIVE")
        {
            key = self.console_public_key(&srv.id).await;
            if let Some(k) = &key {
                self.ledger.update(|d| {
                    d.public_keys.insert(node.clone(), k.clone());
                })?;
            }
        }
        let observed = srv.map(|srv| ObservedNode {
            site: self.site.name.clone(),
            public_ip,
            public_key: key.and_then(|k| hybridgrid_core::keys::PublicKey::from_base64(&k).ok()),
            applied: ledger.applied_config(node, &srv.metadata),
            measured: None,
            instance: Some(srv.id.clone()),
        });
        // A relay's port with its floating IP but no server (deleted by hand): the IP stays
        // reserved for the server made again.
        let reserved = public_ip.filter(|_| observed.is_none());
        Ok((node.clone(), observed, pairs, reserved))
    }

    /// A node's port: its floating IP (the cluster's, tagged) and its allowed-address pairs.
    async fn port_state(
        &self,
        node: &str,
        port: &Value,
    ) -> Result<(Option<Ipv4Addr>, Vec<Ipv4Net>)> {
        let port_id = need_id(port, NET, &format!("the port of {node}"))?;
        let fips = self.fips_on_port(&port_id).await?;
        let public_ip = match fips.first().filter(|f| self.tagged(f)) {
            Some(f) => Some(self.fip_address(node, f)?),
            None => None,
        };
        // Pairs that are not IPv4 (IPv6, a MAC only) are not the plan's.
        let pairs = port["allowed_address_pairs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["ip_address"].as_str().and_then(parse_net))
            .collect();
        Ok((public_ip, pairs))
    }
}
