//! Stage two, per site: names, subnets, underlay MTUs, worker groups, OpenStack node specs,
//! and which site holds the master.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use crate::addr;
use crate::diag::Pos;
use crate::raw::{self, RawCluster};

use super::{
    ALL_PARTITION, DEFAULT_UNDERLAY_MTU, MAX_GROUP_NAME, MAX_SITE_NAME, MIN_TUNNEL_MTU, NodeSpec,
    Provider, Site, Validator, WG_OVERHEAD_IPV4, WorkerGroup,
};

impl Validator<'_> {
    /// Each site with its raw form (for positions), or `None` where it had errors.
    pub(super) fn sites<'r>(
        &mut self,
        raw: &'r RawCluster,
        provider: Option<Provider>,
    ) -> Vec<(&'r raw::RawSite, Option<Site>)> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut out = Vec::new();
        let wan_base = self.cluster_wan(raw, provider);
        for (i, s) in raw.sites.iter().enumerate() {
            let path = format!("sites[{i}]");
            let mut ok = self.site_name(s, i, &path, &mut seen);
            let (subnet, subnet_ok) = self.site_subnet(s, &path);
            ok &= subnet_ok;
            let underlay_mtu = self.underlay_mtu(s, &path);
            let workers = self.worker_groups(s, &path, provider);
            let wan = self.site_wan(s, &path, wan_base.flatten(), provider);
            ok &= wan.is_ok();
            if let (Some(net), Some(groups)) = (subnet, &workers) {
                ok &= self.pair_room(s, &path, net) && self.worker_capacity(s, &path, net, groups);
            }
            if provider == Some(Provider::OpenStack) {
                ok &= self.openstack_site(s, &path);
            }
            let site = (ok && s.name.is_some()).then_some(()).and_then(|()| {
                Some(Site {
                    name: s.name.as_ref()?.value.clone(),
                    subnet: subnet?,
                    master: s.master.as_ref().is_some_and(|m| m.value),
                    underlay_mtu: underlay_mtu?,
                    cloud: s.cloud.as_ref().map(|c| c.value.clone()),
                    network: s.network.as_ref().map(|c| c.value.clone()),
                    external_network: s.external_network.as_ref().map(|c| c.value.clone()),
                    gateway: NodeSpec {
                        flavor: s.gateway.flavor.as_ref().map(|c| c.value.clone()),
                        image: s.gateway.image.as_ref().map(|c| c.value.clone()),
                    },
                    standby: s.gateway.standby.as_ref().is_some_and(|b| b.value),
                    workers: workers?,
                    wan: wan.ok().flatten(),
                })
            });
            out.push((s, site));
        }
        out
    }

    /// The site's name: valid, not `all`, and not another site's (`seen`: names so far).
    fn site_name<'r>(
        &mut self,
        s: &'r raw::RawSite,
        i: usize,
        path: &str,
        seen: &mut BTreeMap<&'r str, usize>,
    ) -> bool {
        let Some(n) = &s.name else {
            return true;
        };
        let mut ok = self.name(n, format!("{path}.name"), "site", MAX_SITE_NAME);
        if n.value == ALL_PARTITION {
            ok = false;
            self.error(
                n.pos,
                format!("{path}.name"),
                "`all` is reserved: it names the partition that spans every site",
                "choose another site name",
            );
        }
        if let Some(first) = seen.insert(&n.value, i) {
            ok = false;
            self.error(
                n.pos,
                format!("{path}.name"),
                format!("site name `{}` is used twice", n.value),
                format!("sites[{first}] already has this name; give each site its own"),
            );
        }
        ok
    }

    /// The site's subnet, and whether it is large enough for a site (a /29 at least).
    fn site_subnet(&mut self, s: &raw::RawSite, path: &str) -> (Option<Ipv4Net>, bool) {
        let subnet = s
            .subnet
            .as_ref()
            .and_then(|c| self.cidr(c, format!("{path}.subnet")));
        if let Some(net) = subnet
            && net.prefix_len() > 29
        {
            self.error(
                s.subnet.as_ref().map(|c| c.pos).unwrap_or(s.pos),
                format!("{path}.subnet"),
                format!("{net} is too small for a site"),
                "a site needs at least a /29 (router, cloud ports, relay node and a worker)",
            );
            return (subnet, false);
        }
        (subnet, true)
    }

    fn underlay_mtu(&mut self, s: &raw::RawSite, path: &str) -> Option<u16> {
        let Some(m) = &s.underlay_mtu else {
            return Some(DEFAULT_UNDERLAY_MTU);
        };
        match u16::try_from(m.value) {
            Ok(v) if (MIN_TUNNEL_MTU + WG_OVERHEAD_IPV4..=9000).contains(&v) => Some(v),
            _ => {
                self.error(
                    m.pos,
                    format!("{path}.underlay_mtu"),
                    format!("underlay MTU {} is out of range", m.value),
                    format!(
                        "use the site network's MTU, from {} to 9000 (OpenStack VXLAN: 1450)",
                        MIN_TUNNEL_MTU + WG_OVERHEAD_IPV4
                    ),
                );
                None
            }
        }
    }

    /// Whether a site with `gateway.standby` has room for the pair above its reserved hosts.
    fn pair_room(&mut self, s: &raw::RawSite, path: &str, net: Ipv4Net) -> bool {
        let Some(standby) = s.gateway.standby.as_ref().filter(|b| b.value) else {
            return true;
        };
        if addr::pair_vip(net).is_some() {
            return true;
        }
        self.error(
            standby.pos,
            format!("{path}.gateway.standby"),
            format!("{net} has no room for a relay pair"),
            format!(
                "a pair takes the subnet's last {} hosts above .{}: use a /28 or larger",
                addr::PAIR_HOSTS,
                addr::RELAY_OFFSET
            ),
        );
        false
    }

    /// Whether the subnet has an address for every worker of the site's groups.
    fn worker_capacity(
        &mut self,
        s: &raw::RawSite,
        path: &str,
        net: Ipv4Net,
        groups: &[WorkerGroup],
    ) -> bool {
        let needed: u64 = groups.iter().map(|g| u64::from(g.count)).sum();
        let standby = s.gateway.standby.as_ref().is_some_and(|b| b.value);
        let capacity = addr::worker_capacity(net, standby);
        if needed <= capacity {
            return true;
        }
        let reserved = if standby {
            format!(
                "hosts .1–.{} and the last {} (the relay pair) are reserved",
                addr::RELAY_OFFSET,
                addr::PAIR_HOSTS
            )
        } else {
            format!("hosts .1–.{} are reserved", addr::RELAY_OFFSET)
        };
        self.error(
            s.subnet.as_ref().map(|c| c.pos).unwrap_or(s.pos),
            format!("{path}.subnet"),
            format!("{net} holds at most {capacity} workers, but the site has {needed}"),
            format!("use a larger subnet ({reserved}) or fewer workers"),
        );
        false
    }

    /// What an openstack site needs: its `cloud`, and the relay's flavor and image.
    fn openstack_site(&mut self, s: &raw::RawSite, path: &str) -> bool {
        let mut ok = true;
        if s.cloud.is_none() {
            ok = false;
            self.error(
                s.pos,
                format!("{path}.cloud"),
                "an openstack site needs `cloud`",
                "name this site's entry in clouds.yaml, e.g. `cloud: bielefeld`",
            );
        }
        ok & self.openstack_spec(&s.gateway, s.pos, &format!("{path}.gateway"))
    }

    fn openstack_spec(&mut self, spec: &raw::RawNodeSpec, fallback: Pos, path: &str) -> bool {
        let pos = if spec.pos == Pos::default() {
            fallback
        } else {
            spec.pos
        };
        let mut ok = true;
        for (key, value) in [("flavor", &spec.flavor), ("image", &spec.image)] {
            if value.is_none() {
                ok = false;
                self.error(
                    pos,
                    format!("{path}.{key}"),
                    format!("an openstack node needs `{key}`"),
                    format!(
                        "name the {key} to boot this node with, as `openstack {key} list` shows it"
                    ),
                );
            }
        }
        ok
    }

    fn worker_groups(
        &mut self,
        s: &raw::RawSite,
        path: &str,
        provider: Option<Provider>,
    ) -> Option<Vec<WorkerGroup>> {
        let mut groups = Vec::new();
        let mut ok = true;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (j, g) in s.workers.iter().enumerate() {
            let gpath = format!("{path}.workers[{j}]");
            let (name, name_ok) = self.worker_group_name(g, j, path, &mut seen);
            match self.worker_group(g, &gpath, name, provider) {
                Some(group) if name_ok => groups.push(group),
                _ => ok = false,
            }
        }
        ok.then_some(groups)
    }

    /// The group's name (`worker` when it has none), and whether it is valid and the only one
    /// of its site with that name (`seen`: names so far).
    fn worker_group_name(
        &mut self,
        g: &raw::RawWorkerGroup,
        j: usize,
        path: &str,
        seen: &mut BTreeMap<String, usize>,
    ) -> (String, bool) {
        let gpath = format!("{path}.workers[{j}]");
        let mut ok = true;
        let name = match &g.name {
            Some(n) => {
                ok &= self.name(n, format!("{gpath}.name"), "worker group", MAX_GROUP_NAME);
                n.value.clone()
            }
            None => "worker".to_owned(),
        };
        if let Some(first) = seen.insert(name.clone(), j) {
            ok = false;
            self.error(
                g.name.as_ref().map(|n| n.pos).unwrap_or(g.pos),
                format!("{gpath}.name"),
                format!("worker group name `{name}` is used twice in this site"),
                format!("{path}.workers[{first}] has it already; name each group (`name: big`)"),
            );
        }
        (name, ok)
    }

    /// One worker group: its count and size, what openstack needs, and whether it may be on
    /// demand; `None` where it had errors.
    fn worker_group(
        &mut self,
        g: &raw::RawWorkerGroup,
        gpath: &str,
        name: String,
        provider: Option<Provider>,
    ) -> Option<WorkerGroup> {
        let count = g.count.as_ref().and_then(|c| match u32::try_from(c.value) {
            Ok(v) if v <= 10_000 => Some(v),
            _ => {
                self.error(
                    c.pos,
                    format!("{gpath}.count"),
                    format!("{} workers is too many", c.value),
                    "use at most 10000 per group",
                );
                None
            }
        });
        let size = self.worker_size(g, gpath);
        let mut ok = true;
        if provider == Some(Provider::OpenStack) {
            let spec = raw::RawNodeSpec {
                pos: g.pos,
                flavor: g.flavor.clone(),
                image: g.image.clone(),
                standby: None,
            };
            ok &= self.openstack_spec(&spec, g.pos, gpath);
        }
        let on_demand = g.on_demand.as_ref().is_some_and(|o| o.value);
        let (count, (cpus, memory_mib)) = (count?, size?);
        ok.then(|| WorkerGroup {
            name,
            count,
            cpus,
            memory_mib,
            on_demand,
            spec: NodeSpec {
                flavor: g.flavor.as_ref().map(|c| c.value.clone()),
                image: g.image.as_ref().map(|c| c.value.clone()),
            },
        })
    }

    /// The group's CPUs and memory; `None` inside: not given, the flavor's (or the default
    /// where there is none); `None`: one of them is out of range.
    fn worker_size(
        &mut self,
        g: &raw::RawWorkerGroup,
        gpath: &str,
    ) -> Option<(Option<u32>, Option<u64>)> {
        let cpus = match &g.cpus {
            None => Some(None),
            Some(c) => match u32::try_from(c.value) {
                Ok(v) if (1..=4096).contains(&v) => Some(Some(v)),
                _ => {
                    self.error(
                        c.pos,
                        format!("{gpath}.cpus"),
                        format!("{} CPUs is out of range", c.value),
                        "use 1 to 4096",
                    );
                    None
                }
            },
        };
        let memory_mib = match &g.memory {
            None => Some(None),
            Some(m) if m.value >= 1 => Some(Some(m.value)),
            Some(m) => {
                self.error(
                    m.pos,
                    format!("{gpath}.memory"),
                    "memory must be at least 1 MiB",
                    "give the worker's memory in MiB, e.g. `memory: 4096`",
                );
                None
            }
        };
        Some((cpus?, memory_mib?))
    }

    pub(super) fn master(&mut self, raw: &RawCluster, sites: &[(&raw::RawSite, Option<Site>)]) {
        let masters: Vec<_> = sites
            .iter()
            .enumerate()
            .filter(|(_, (rs, _))| rs.master.as_ref().is_some_and(|m| m.value))
            .collect();
        match masters.as_slice() {
            [] if !sites.is_empty() => self.error(
                raw.sites_pos,
                "sites",
                "no site holds the master",
                "mark exactly one site with `master: true`",
            ),
            [_] | [] => {}
            [(first, _), rest @ ..] => {
                for (i, (rs, _)) in rest {
                    let pos = rs.master.as_ref().map(|m| m.pos).unwrap_or(rs.pos);
                    self.error(
                        pos,
                        format!("sites[{i}].master"),
                        "a second site claims the master",
                        format!(
                            "sites[{first}] is already the master site; a cluster has exactly one"
                        ),
                    );
                }
            }
        }
    }
}
