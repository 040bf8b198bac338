//! A site's relay pair on OpenStack (`gateway.standby`), the recipe clouds document for a
//! virtual IP: an unbound port holding the pair's virtual address with the pair's floating IP
//! (Neutron's router sends it to whichever relay answers for the address), the address as an
//! allowed-address pair on both relays' ports (the plan's `AddAddressPairs`), VRRP admitted
//! between them by the `nodes` group's "all traffic within the site", and a soft anti-affinity
//! server group so that Nova puts the two on different hosts where it can.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::api::{NET, NOVA, Req, need_id};
use crate::error::Result;
use crate::ledger::{Kind, State};
use crate::site::{NetIds, SiteOps};

impl SiteOps {
    /// The pair's virtual-address port: `<cluster>-<identity>-vip`.
    pub fn vip_port_name(&self, identity: &str) -> String {
        format!("{}-{identity}-vip", self.cluster)
    }

    /// The site's server group for its pair: `<cluster>-<site>-relays`.
    pub fn server_group_name(&self) -> String {
        format!("{}-{}-relays", self.cluster, self.site.name)
    }

    pub async fn find_vip_port(&self, identity: &str, net_id: &str) -> Result<Option<Value>> {
        self.port_named(&self.vip_port_name(identity), net_id).await
    }

    /// The pair's virtual-address port (found by name, else made, tagged and ledgered): no
    /// device, no security group (nothing is ever sent from it). Its id, and whether it is new.
    pub async fn ensure_vip_port(
        &self,
        identity: &str,
        address: Ipv4Addr,
        ids: &NetIds,
    ) -> Result<(String, bool)> {
        let name = self.vip_port_name(identity);
        if let Some(p) = self.find_vip_port(identity, &ids.net).await? {
            self.ensure_tags("ports", &p).await?;
            return Ok((need_id(&p, NET, &format!("port {name}"))?, false));
        }
        let p = self
            .create_neutron(
                Kind::Port,
                &name,
                "ports",
                "port",
                json!({
                    "name": name,
                    "network_id": ids.net,
                    "fixed_ips": [{ "subnet_id": ids.subnet, "ip_address": address.to_string() }],
                    "security_groups": [],
                    "description": format!("hybridgrid relay pair {identity}: virtual address"),
                }),
            )
            .await?;
        Ok((need_id(&p, NET, &format!("port {name}"))?, true))
    }

    /// Removes the pair's virtual-address port and the floating IPs on it (a floating IP the
    /// pair's identity still names, moved to a single gateway, is not on it any more), and the
    /// site's server group.
    pub async fn remove_vip_port(&self, identity: &str, net_id: &str) -> Result<()> {
        if let Some(id) = self.find_server_group().await? {
            self.delete_server_group(&id).await?;
            self.ledger.forget(
                &self.site.name,
                Kind::ServerGroup,
                &self.server_group_name(),
            )?;
        }
        if let Some(p) = self.find_vip_port(identity, net_id).await? {
            let id = need_id(&p, NET, &format!("port {}", self.vip_port_name(identity)))?;
            let fips = self.fips_on_port(&id).await?;
            crate::apply::delete_fips(self, identity, &fips).await?;
            self.cloud
                .delete("delete port", Req::delete(NET, format!("ports/{id}")))
                .await?;
        }
        self.ledger
            .forget(&self.site.name, Kind::Port, &self.vip_port_name(identity))
    }

    /// The id of the site's soft anti-affinity server group, made (and ledgered) when missing.
    pub async fn ensure_server_group(&self) -> Result<String> {
        let name = self.server_group_name();
        if let Some(id) = self.find_server_group().await? {
            return Ok(id);
        }
        self.record(Kind::ServerGroup, &name, None, State::Intended)?;
        let v = self
            .cloud
            .create(
                &format!("create server group {name}"),
                Req::post(
                    NOVA,
                    "os-server-groups",
                    json!({ "server_group": { "name": name, "policy": "soft-anti-affinity" } }),
                ),
            )
            .await?;
        let id = need_id(&v["server_group"], NOVA, &format!("server group {name}"))?;
        self.record(Kind::ServerGroup, &name, Some(&id), State::Created)?;
        Ok(id)
    }

    /// Deletes the server group `id` (`false`: it was gone already).
    pub async fn delete_server_group(&self, id: &str) -> Result<bool> {
        self.cloud
            .delete(
                "delete server group",
                Req::delete(NOVA, format!("os-server-groups/{id}")),
            )
            .await
    }

    /// The id of the site's server group, if the project has it.
    pub async fn find_server_group(&self) -> Result<Option<String>> {
        let name = self.server_group_name();
        let groups = self
            .cloud
            .list(
                "list server groups",
                Req::get(NOVA, "os-server-groups"),
                "server_groups",
            )
            .await?;
        groups
            .iter()
            .find(|g| g["name"].as_str() == Some(name.as_str()))
            .map(|g| need_id(g, NOVA, &format!("server group {name}")))
            .transpose()
    }
}
