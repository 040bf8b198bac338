//! `validate --online` for the openstack provider: clouds answer, flavors, images and
//! networks exist, quotas cover what the plan creates.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use hybridgrid_core::diff::Change;
use hybridgrid_core::error_chain;
use hybridgrid_core::plan::Plan;
use serde_json::Value;

use crate::api::{self, Cloud, NET, NOVA, Req, need_i64};
use crate::error::Result;
use crate::provider::{OpenStack, Problem};
use crate::site::{SiteOps, find_by_name_or_id};

impl OpenStack {
    /// [`OpenStack::validate_online`] for callers without a runtime.
    pub fn validate_online_blocking(
        &self,
        plan: &Plan,
    ) -> std::result::Result<Vec<Problem>, hybridgrid_engine::EngineError> {
        self.block(self.validate_online(plan))?
            .map_err(hybridgrid_engine::EngineError::provider)
    }

    /// Checks against the clouds that the plan can be built: clouds answer, flavors, images and
    /// networks exist, and quotas cover what the plan's changes create (plan with the observed
    /// state to count only what is missing).
    pub async fn validate_online(&self, plan: &Plan) -> Result<Vec<Problem>> {
        let config = api::load_config(self.opts.clouds_file.as_deref())?;
        let futs = self.cluster.sites.iter().map(|site| {
            let config = &config;
            async move {
                let mut problems = Vec::new();
                let p = |m: String| Problem {
                    site: site.name.clone(),
                    message: m,
                };
                let Some(cloud_name) = &site.cloud else {
                    problems.push(p("no `cloud` given".into()));
                    return problems;
                };
                let cloud = match Cloud::connect(
                    config,
                    &site.name,
                    cloud_name,
                    self.crash.clone(),
                    self.opts.trace.clone(),
                )
                .await
                {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        problems.push(p(error_chain(&e)));
                        return problems;
                    }
                };
                let ops = SiteOps::new(
                    &self.cluster.name,
                    site.clone(),
                    cloud,
                    self.ledger.clone(),
                    (None, None),
                    None,
                    self.opts.server_timeout,
                );
                if let Err(e) = validate_site(&ops, plan, &mut problems).await {
                    problems.push(p(error_chain(&e)));
                }
                problems
            }
        });
        Ok(join_all(futs).await.into_iter().flatten().collect())
    }
}

/// One site's checks ([`OpenStack::validate_online`]): its nodes' flavors and images, its
/// network, and the quotas against what the plan's changes create there.
async fn validate_site(ops: &SiteOps, plan: &Plan, problems: &mut Vec<Problem>) -> Result<()> {
    let mut check = SiteCheck { ops, problems };
    let flavors = ops.flavors().await?;
    check.flavors_and_images(plan, &flavors).await;
    check.network().await?;
    let need = needs(ops, plan, &plan.changes, &flavors)?;
    check.compute_quota(&need).await?;
    check.network_quota(&need).await
}

/// Whether the site's quotas leave room for what `changes` create (checked before a node is
/// made, so that a cloud out of quota is a clear reason rather than a server in ERROR): the
/// shortfalls in words, none when there is room.
pub(crate) async fn headroom(
    ops: &SiteOps,
    plan: &Plan,
    changes: &[Change],
) -> Result<Vec<String>> {
    let flavors = ops.flavors().await?;
    let need = needs(ops, plan, changes, &flavors)?;
    let mut problems = Vec::new();
    let mut check = SiteCheck {
        ops,
        problems: &mut problems,
    };
    check.compute_quota(&need).await?;
    check.network_quota(&need).await?;
    Ok(problems.into_iter().map(|p| p.message).collect())
}

/// The problems found on one site.
struct SiteCheck<'a> {
    ops: &'a SiteOps,
    problems: &'a mut Vec<Problem>,
}

impl SiteCheck<'_> {
    fn push(&mut self, message: String) {
        self.problems.push(Problem {
            site: self.ops.site.name.clone(),
            message,
        });
    }

    /// Each node's flavor (named once) and image exist.
    async fn flavors_and_images(&mut self, plan: &Plan, flavors: &[Value]) {
        let ops = self.ops;
        let site = &ops.site.name;
        let mut images_ok = BTreeMap::new();
        for n in plan.nodes.iter().filter(|n| n.site == *site) {
            if let Some(f) = &n.flavor
                && find_by_name_or_id(flavors, f).is_none()
                && !self
                    .problems
                    .iter()
                    .any(|x| x.message.contains(&format!("`{f}`")))
            {
                self.push(format!("flavor `{f}` not found (node {})", n.name));
            }
            if let Some(i) = &n.image
                && !images_ok.contains_key(i)
            {
                let ok = ops.image_id(i).await.is_ok();
                images_ok.insert(i.clone(), ok);
                if !ok {
                    self.push(format!("image `{i}` not found (node {})", n.name));
                }
            }
        }
    }

    /// The file's existing network with the site's subnet, and the external network.
    async fn network(&mut self) -> Result<()> {
        let ops = self.ops;
        if let Some(net) = &ops.site.network {
            match ops.find_network().await {
                Ok(Some(n)) => {
                    let net_id = ops.neutron_id(&n, "network")?;
                    if ops.find_subnet(&net_id).await?.is_none() {
                        self.push(format!("network `{net}` has no subnet {}", ops.site.subnet));
                    }
                }
                Ok(None) => self.push(format!("network `{net}` not found")),
                Err(e) => self.push(error_chain(&e)),
            }
        }
        if let Err(e) = ops.external_network().await {
            self.push(error_chain(&e));
        }
        Ok(())
    }

    /// Nova's instances, cores and RAM.
    async fn compute_quota(&mut self, need: &BTreeMap<&str, i64>) -> Result<()> {
        let limits = self
            .ops
            .cloud
            .get("get compute limits", Req::get(NOVA, "limits"))
            .await?;
        let abs = &limits["limits"]["absolute"];
        for (what, max, used) in [
            ("instances", "maxTotalInstances", "totalInstancesUsed"),
            ("cores", "maxTotalCores", "totalCoresUsed"),
            ("ram", "maxTotalRAMSize", "totalRAMUsed"),
        ] {
            let need = need.get(what).copied().unwrap_or(0);
            let Some(limit) = limited(abs[max].as_i64(), need) else {
                continue;
            };
            let used = need_i64(abs, NOVA, "the compute limits", used)?;
            self.quota(what, limit, used, need);
        }
        Ok(())
    }

    /// Neutron's quotas of what the plan creates.
    async fn network_quota(&mut self, need: &BTreeMap<&str, i64>) -> Result<()> {
        let ops = self.ops;
        let nq = ops
            .cloud
            .get(
                "get network quota",
                Req::get(NET, format!("quotas/{}/details", ops.cloud.project_id)),
            )
            .await?;
        for what in [
            "network",
            "subnet",
            "router",
            "port",
            "floatingip",
            "security_group",
            "security_group_rule",
        ] {
            let q = &nq["quota"][what];
            let need = need.get(what).copied().unwrap_or(0);
            let Some(limit) = limited(q["limit"].as_i64(), need) else {
                continue;
            };
            let resource = format!("the {what} quota");
            let used =
                need_i64(q, NET, &resource, "used")? + need_i64(q, NET, &resource, "reserved")?;
            self.quota(what, limit, used, need);
        }
        Ok(())
    }

    fn quota(&mut self, what: &str, limit: i64, used: i64, need: i64) {
        if used + need > limit {
            self.push(format!(
                "quota {what}: the plan needs {need} more, {} of {limit} are free",
                (limit - used).max(0)
            ));
        }
    }
}

/// The limit that matters: none when the cloud sets none (or a negative one: unlimited) or
/// the plan needs nothing of it.
fn limited(limit: Option<i64>, need: i64) -> Option<i64> {
    limit.filter(|l| *l >= 0 && need > 0)
}

/// What `changes` create on the site, by quota name.
fn needs(
    ops: &SiteOps,
    plan: &Plan,
    changes: &[Change],
    flavors: &[Value],
) -> Result<BTreeMap<&'static str, i64>> {
    let mut need: BTreeMap<&'static str, i64> = BTreeMap::new();
    let mut add = |what: &'static str, n: i64| *need.entry(what).or_default() += n;
    for c in changes.iter().filter(|c| c.site() == ops.site.name) {
        match c {
            Change::CreateNetwork { .. } if ops.site.network.is_none() => {
                for what in ["network", "subnet", "router", "port"] {
                    add(what, 1);
                }
            }
            Change::CreateSecurityGroup { .. } => {
                add("security_group", 1);
                // Neutron adds two egress rules to every new group.
                add("security_group_rule", 2);
            }
            Change::AddRule { .. } => add("security_group_rule", 1),
            Change::AssignPublicIp { .. } => add("floatingip", 1),
            Change::CreateNode { node, .. } => {
                add("port", 1);
                add("instances", 1);
                if let Some((name, f)) = plan
                    .node(node)
                    .and_then(|n| n.flavor.as_deref())
                    .and_then(|name| Some((name, find_by_name_or_id(flavors, name)?)))
                {
                    let what = format!("flavor {name}");
                    add("cores", need_i64(f, NOVA, &what, "vcpus")?);
                    add("ram", need_i64(f, NOVA, &what, "ram")?);
                }
            }
            _ => {}
        }
    }
    Ok(need)
}
