//! `validate --online` for the openstack provider: clouds answer, flavors, images and
//! networks exist, quotas cover what the plan creates.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use hybridgrid_core::diff::Change;
use hybridgrid_core::plan::Plan;

use crate::api::{self, Cloud, NET, NOVA, Req, s};
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
                        problems.push(p(e.to_string()));
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
                    problems.push(p(e.to_string()));
                }
                problems
            }
        });
        Ok(join_all(futs).await.into_iter().flatten().collect())
    }
}

async fn validate_site(ops: &SiteOps, plan: &Plan, problems: &mut Vec<Problem>) -> Result<()> {
    let site = ops.site.name.clone();
    let p = |m: String| Problem {
        site: site.clone(),
        message: m,
    };
    let nodes: Vec<_> = plan.nodes.iter().filter(|n| n.site == site).collect();
    let flavors = ops.flavors().await?;
    let mut images_ok = BTreeMap::new();
    for n in &nodes {
        if let Some(f) = &n.flavor
            && find_by_name_or_id(&flavors, f).is_none()
            && !problems
                .iter()
                .any(|x| x.message.contains(&format!("`{f}`")))
        {
            problems.push(p(format!("flavor `{f}` not found (node {})", n.name)));
        }
        if let Some(i) = &n.image
            && !images_ok.contains_key(i)
        {
            let ok = ops.image_id(i).await.is_ok();
            images_ok.insert(i.clone(), ok);
            if !ok {
                problems.push(p(format!("image `{i}` not found (node {})", n.name)));
            }
        }
    }
    if let Some(net) = &ops.site.network {
        match ops.find_network().await {
            Ok(Some(n)) => {
                if ops.find_subnet(&s(&n["id"])).await?.is_none() {
                    problems.push(p(format!(
                        "network `{net}` has no subnet {}",
                        ops.site.subnet
                    )));
                }
            }
            Ok(None) => problems.push(p(format!("network `{net}` not found"))),
            Err(e) => problems.push(p(e.to_string())),
        }
    }
    if let Err(e) = ops.external_network().await {
        problems.push(p(e.to_string()));
    }
    // What the plan's changes create here.
    let mut need: BTreeMap<&str, i64> = BTreeMap::new();
    for c in plan.changes.iter().filter(|c| c.site() == site) {
        match c {
            Change::CreateNetwork { .. } if ops.site.network.is_none() => {
                *need.entry("network").or_default() += 1;
                *need.entry("subnet").or_default() += 1;
                *need.entry("router").or_default() += 1;
                *need.entry("port").or_default() += 1;
            }
            Change::CreateSecurityGroup { .. } => {
                *need.entry("security_group").or_default() += 1;
                // Neutron adds two egress rules to every new group.
                *need.entry("security_group_rule").or_default() += 2;
            }
            Change::AddRule { .. } => *need.entry("security_group_rule").or_default() += 1,
            Change::AssignPublicIp { .. } => *need.entry("floatingip").or_default() += 1,
            Change::CreateNode { node, .. } => {
                *need.entry("port").or_default() += 1;
                *need.entry("instances").or_default() += 1;
                if let Some(f) = plan
                    .node(node)
                    .and_then(|n| n.flavor.as_deref())
                    .and_then(|f| find_by_name_or_id(&flavors, f))
                {
                    *need.entry("cores").or_default() += f["vcpus"].as_i64().unwrap_or(0);
                    *need.entry("ram").or_default() += f["ram"].as_i64().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    let limits = ops
        .cloud
        .get("get compute limits", Req::get(NOVA, "limits"))
        .await?;
    let abs = &limits["limits"]["absolute"];
    for (what, max, used) in [
        ("instances", "maxTotalInstances", "totalInstancesUsed"),
        ("cores", "maxTotalCores", "totalCoresUsed"),
        ("ram", "maxTotalRAMSize", "totalRAMUsed"),
    ] {
        check_quota(
            what,
            abs[max].as_i64(),
            abs[used].as_i64().unwrap_or(0),
            need.get(what).copied().unwrap_or(0),
            &p,
            problems,
        );
    }
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
        check_quota(
            what,
            q["limit"].as_i64(),
            q["used"].as_i64().unwrap_or(0) + q["reserved"].as_i64().unwrap_or(0),
            need.get(what).copied().unwrap_or(0),
            &p,
            problems,
        );
    }
    Ok(())
}

fn check_quota(
    what: &str,
    limit: Option<i64>,
    used: i64,
    need: i64,
    p: &dyn Fn(String) -> Problem,
    problems: &mut Vec<Problem>,
) {
    let Some(limit) = limit else { return };
    if limit < 0 || need == 0 {
        return;
    }
    if used + need > limit {
        problems.push(p(format!(
            "quota {what}: the plan needs {need} more, {} of {limit} are free",
            (limit - used).max(0)
        )));
    }
}
