//! `validate --online` for the openstack provider: clouds answer, flavors, images and
//! networks exist, quotas cover what the plan creates.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use hybridgrid_core::error_chain;
use hybridgrid_core::plan::Plan;
use serde_json::Value;

use crate::api::{self, Cloud, Req, SWIFT};
use crate::error::Result;
use crate::provider::{OpenStack, Problem};
use crate::quota;
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
                    warning: false,
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
    check.buckets(plan).await;
    let need = quota::needs(ops, plan, &plan.changes, &flavors)?;
    for shortfall in quota::shortfalls(ops, &need).await? {
        check.push(shortfall);
    }
    Ok(())
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
            warning: false,
        });
    }

    fn warn(&mut self, message: String) {
        self.problems.push(Problem {
            site: self.ops.site.name.clone(),
            message,
            warning: true,
        });
    }

    /// The site's cloud has an object store where the site holds datasets in buckets, and the
    /// buckets exist (one missing is a warning: `up` makes it, empty). Looked up through
    /// Swift's API with the site's token: no EC2 keys exist before `up`.
    async fn buckets(&mut self, plan: &Plan) {
        let ops = self.ops;
        let site = ops.site.name.as_str();
        if !plan.site_has_store_data(site) {
            return;
        }
        if ops.cloud.object_store_endpoint().is_none() {
            self.push(format!(
                "cloud `{}` has no object store (service type object-store) in region {}, \
                 and datasets of the site name buckets",
                ops.cloud.name,
                ops.cloud.region().unwrap_or_else(|| "(none)".into())
            ));
            return;
        }
        for bucket in plan.site_buckets(site) {
            let req = Req::get(SWIFT, bucket).q("limit", "0").q("format", "json");
            match ops.cloud.get_opt("look up bucket", req).await {
                Ok(Some(_)) => {}
                Ok(None) => self.warn(format!(
                    "bucket `{bucket}` does not exist in the site's object store; `up` makes it, empty"
                )),
                Err(e) => self.push(format!("bucket `{bucket}`: {}", error_chain(&e))),
            }
        }
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
}
