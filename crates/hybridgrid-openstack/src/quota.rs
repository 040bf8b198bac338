//! A site's quotas against what changes create: `validate --online` reports the shortfalls,
//! and `apply` refuses to make nodes the site has no room for ([`headroom`]), so that a cloud out
//! of quota is a clear reason rather than a server in ERROR.

use std::collections::BTreeMap;

use hybridgrid_core::diff::Change;
use hybridgrid_core::plan::Plan;
use serde_json::Value;

use crate::api::{NET, NOVA, Req, need_i64};
use crate::error::Result;
use crate::site::{SiteOps, find_by_name_or_id};

/// The site's shortfalls for what `changes` create (none: there is room).
pub(crate) async fn headroom(
    ops: &SiteOps,
    plan: &Plan,
    changes: &[Change],
) -> Result<Vec<String>> {
    let flavors = ops.flavors().await?;
    let need = needs(ops, plan, changes, &flavors)?;
    shortfalls(ops, &need).await
}

/// Each quota `need` exceeds (Nova's instances, cores and RAM; Neutron's resources), in words.
pub(crate) async fn shortfalls(ops: &SiteOps, need: &BTreeMap<&str, i64>) -> Result<Vec<String>> {
    let (compute, network) = tokio::try_join!(compute(ops, need), network(ops, need))?;
    Ok(compute.into_iter().chain(network).collect())
}

/// Nova's instances, cores and RAM.
async fn compute(ops: &SiteOps, need: &BTreeMap<&str, i64>) -> Result<Vec<String>> {
    let limits = ops
        .cloud
        .get("get compute limits", Req::get(NOVA, "limits"))
        .await?;
    let abs = &limits["limits"]["absolute"];
    let mut out = Vec::new();
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
        out.extend(shortfall(what, limit, used, need));
    }
    Ok(out)
}

/// Neutron's quotas of what the changes create.
async fn network(ops: &SiteOps, need: &BTreeMap<&str, i64>) -> Result<Vec<String>> {
    let nq = ops
        .cloud
        .get(
            "get network quota",
            Req::get(NET, format!("quotas/{}/details", ops.cloud.project_id)),
        )
        .await?;
    let mut out = Vec::new();
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
        let used = need_i64(q, NET, &resource, "used")? + need_i64(q, NET, &resource, "reserved")?;
        out.extend(shortfall(what, limit, used, need));
    }
    Ok(out)
}

fn shortfall(what: &str, limit: i64, used: i64, need: i64) -> Option<String> {
    (used + need > limit).then(|| {
        format!(
            "quota {what}: the plan needs {need} more, {} of {limit} are free",
            (limit - used).max(0)
        )
    })
}

/// The limit that matters: none when the cloud sets none (or a negative one: unlimited) or
/// the plan needs nothing of it.
fn limited(limit: Option<i64>, need: i64) -> Option<i64> {
    limit.filter(|l| *l >= 0 && need > 0)
}

/// What `changes` create on the site, by quota name.
pub(crate) fn needs(
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
            // A relay pair's virtual address is a port of its own.
            Change::CreateVirtualAddress { .. } => add("port", 1),
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
