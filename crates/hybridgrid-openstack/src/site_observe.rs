//! What exists of a site ([`SiteOps::observe`]), and small helpers that read Neutron's and
//! Nova's answers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use hybridgrid_core::diff::{ObservedNode, ObservedSite};
use hybridgrid_core::observed::FlavorSize;
use hybridgrid_core::plan::Plan;

use crate::api::{NET, Req, s};
use crate::error::{OsError, Result};
use crate::site::{SiteOps, parse_net};
use crate::site_groups::rule_of;

impl SiteOps {
    /// The sizes of the flavors the cluster file names for this site (the plan sizes workers
    /// without `cpus` or `memory` by them). A flavor the cloud does not list is left out:
    /// `validate --online` and the server's create name it.
    async fn flavor_sizes(&self) -> Result<BTreeMap<String, FlavorSize>> {
        let named = std::iter::once(&self.site.gateway.flavor)
            .chain(self.site.workers.iter().map(|g| &g.spec.flavor))
            .flatten();
        let all = self.flavors().await?;
        Ok(named
            .filter_map(|name| {
                let f = crate::site::find_by_name_or_id(&all, name)?;
                let size = FlavorSize {
                    vcpus: u32::try_from(f["vcpus"].as_u64()?).ok()?,
                    ram_mib: f["ram"].as_u64()?,
                };
                Some((name.clone(), size))
            })
            .collect())
    }

    /// What exists of this site: network, groups and rules, nodes with their public IPs, pairs
    /// and keys.
    /// The third part: relays whose floating IP is allocated but not (yet) on their port.
    pub async fn observe(
        &self,
        plan: &Plan,
    ) -> Result<(
        ObservedSite,
        BTreeMap<String, ObservedNode>,
        BTreeMap<String, Ipv4Addr>,
    )> {
        // A site that left the file still has the groups its plan had: by their names.
        let group_names: Vec<String> = match plan.site(&self.site.name) {
            Some(p) => p.security_groups.iter().map(|g| g.name.clone()).collect(),
            None => ["nodes", "gateway"]
                .iter()
                .map(|g| format!("{}-{}-{g}", self.cluster, self.site.name))
                .collect(),
        };
        let relay_fips = async {
            match plan.relay_of(&self.site.name) {
                Some(relay) => self.fips_named(&relay.name).await,
                None => Ok(Vec::new()),
            }
        };
        // Independent lookups, concurrently.
        let ((ids, network_ready), groups, relay_fips, servers, flavors) = tokio::try_join!(
            self.network_state(),
            self.security_groups(&group_names),
            relay_fips,
            self.servers(false),
            self.flavor_sizes()
        )?;
        let mut site = ObservedSite {
            network: network_ready,
            flavors,
            ..Default::default()
        };
        for (name, g) in groups {
            if !self.tagged(&g) {
                continue;
            }
            let rules = g["security_group_rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(rule_of)
                .collect();
            site.security_groups.insert(name, rules);
        }
        let mut nodes = BTreeMap::new();
        let mut unattached = BTreeMap::new();
        if let Some(relay) = plan.relay_of(&self.site.name) {
            for f in relay_fips {
                if f["port_id"].is_null()
                    && let Ok(ip) = self.fip_address(&relay.name, &f)
                {
                    unattached.insert(relay.name.clone(), ip);
                }
            }
        }
        let Some(ids) = ids else {
            return Ok((site, nodes, unattached));
        };
        let ledger = self.ledger.snapshot();
        let relay = plan.relay_of(&self.site.name).map(|n| n.name.clone());
        // Ports of relays matter even before their server exists (pairs, floating IP).
        let mut names: BTreeSet<String> = servers.iter().map(|s| s.node.clone()).collect();
        names.extend(relay.clone());
        let futs = names.iter().map(|node| {
            let srv = servers.iter().find(|s| &s.node == node);
            let ids = &ids;
            let ledger = &ledger;
            let relay = &relay;
            async move {
                let port = self
                    .node_port(node, srv.map(|s| s.id.as_str()), &ids.net)
                    .await?;
                let mut public_ip = None;
                let mut pairs = None;
                if let Some(p) = &port {
                    let fips = self
                        .cloud
                        .list(
                            "list floating IPs",
                            Req::get(NET, "floatingips").q("port_id", s(&p["id"])),
                            "floatingips",
                        )
                        .await?;
                    public_ip = fips
                        .first()
                        .filter(|f| self.tagged(f))
                        .and_then(|f| s(&f["floating_ip_address"]).parse::<Ipv4Addr>().ok());
                    pairs = Some(
                        p["allowed_address_pairs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| parse_net(&s(&a["ip_address"])))
                            .collect::<Vec<_>>(),
                    );
                }
                let mut key = ledger.public_keys.get(node).cloned();
                if key.is_none()
                    && relay.as_deref() == Some(node.as_str())
                    && let Some(srv) = srv.filter(|s| s.status == "ACTIVE")
                {
                    key = self.console_public_key(&srv.id).await;
                    if let Some(k) = &key {
                        self.ledger.update(|d| {
                            d.public_keys.insert(node.clone(), k.clone());
                        })?;
                    }
                }
                // What the node applies: its user data, merged with what its metadata delivers.
                let observed = srv.map(|srv| ObservedNode {
                    site: self.site.name.clone(),
                    public_ip,
                    public_key: key
                        .and_then(|k| hybridgrid_core::keys::PublicKey::from_base64(&k).ok()),
                    applied: ledger.applied_config(node, &srv.metadata),
                });
                // A relay's port with its floating IP but no server (deleted by hand): the IP
                // stays reserved for the server made again.
                let reserved = public_ip.filter(|_| observed.is_none());
                Ok::<_, OsError>((node.clone(), observed, pairs, reserved))
            }
        });
        for r in futures::future::join_all(futs).await {
            let (node, observed, pairs, reserved) = r?;
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
}
