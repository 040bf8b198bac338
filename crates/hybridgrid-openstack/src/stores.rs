//! The sites' object stores on openstack: the cloud's own (Swift with `s3api`, or Ceph RadosGW,
//! which serve S3 where their Swift API is).
//!
//! - The S3 endpoint of a site is the origin (`scheme://host:port`) of its cloud's `object-store`
//!   endpoint in the cloud's region; the S3 region is the cloud's region name.
//! - The keys are Keystone EC2 credentials of the site's user for the site's project, made by `up`
//!   when a site holds a dataset in a bucket (`users/{id}/credentials/OS-EC2`), kept on this
//!   machine in `<cluster state>/stores/<site>.json` (0600) and deleted by `down`. Credentials
//!   that are an application credential which is not `unrestricted` cannot make them: `up` stops
//!   with an error naming the site and the cloud.
//! - The keys reach the site's own Slurm nodes only, over the node channel
//!   (`nodes::finish`, the agent's `store.env`); `settle` makes the buckets.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hybridgrid_core::plan::Plan;
use hybridgrid_core::store::StoreAccess;
use hybridgrid_engine::state;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{Cloud, Req};
use crate::error::{OsError, Result, Service};
use crate::provider::OpenStack;
use crate::site::SiteOps;

const STORES_DIR: &str = "stores";
const KEYS_FORMAT_VERSION: u32 = 1;

/// A site's S3 keys as `up` made them (the file is root's, 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoreKeys {
    format_version: u32,
    cloud: String,
    user_id: String,
    endpoint: String,
    region: String,
    access: String,
    secret: String,
}

impl Cloud {
    /// The S3 endpoint: the origin of the cloud's public `object-store` endpoint in its region.
    pub(crate) fn object_store_endpoint(&self) -> Option<String> {
        let region = self.region();
        let catalog = self.catalog()?;
        let service = catalog.iter().find(|s| s.service_type == "object-store")?;
        let endpoint = service
            .endpoints
            .iter()
            .find(|e| e.interface == "public" && (region.is_none() || e.region == region))?;
        let url = url::Url::parse(&endpoint.url).ok()?;
        Some(url.origin().ascii_serialization())
    }
}

impl OpenStack {
    fn store_keys_path(&self, site: &str) -> PathBuf {
        self.opts
            .state_root
            .join(&self.cluster.name)
            .join(STORES_DIR)
            .join(format!("{site}.json"))
    }

    /// The store of every site that holds a dataset in a bucket, its keys made when missing (or
    /// no longer known to Keystone); once per run (every round that configures nodes and
    /// `settle` need them: one Keystone look-up serves them all).
    pub(crate) async fn store_accesses(
        &self,
        plan: &Plan,
    ) -> Result<&BTreeMap<String, StoreAccess>> {
        self.stores
            .get_or_try_init(|| async {
                let sites = self.connected().await?;
                let mut out = BTreeMap::new();
                for ops in sites
                    .iter()
                    .filter(|o| plan.site_has_store_data(&o.site.name))
                {
                    out.insert(ops.site.name.clone(), self.store_access(ops).await?);
                }
                Ok(out)
            })
            .await
    }

    /// The store access of the site of `ops`; its EC2 credentials made unless this machine
    /// holds some that Keystone still knows.
    pub(crate) async fn store_access(&self, ops: &SiteOps) -> Result<StoreAccess> {
        let site = ops.site.name.as_str();
        let cloud = &ops.cloud;
        let endpoint = cloud
            .object_store_endpoint()
            .ok_or_else(|| OsError::NoObjectStore {
                site: site.to_owned(),
                cloud: cloud.name.clone(),
                region: cloud.region().unwrap_or_else(|| "(none)".into()),
            })?;
        let path = self.store_keys_path(site);
        let kept: Option<StoreKeys> = state::load(&path, KEYS_FORMAT_VERSION)?;
        let keys = match kept {
            Some(k) if k.cloud == cloud.name && still_known(cloud, &k).await? => k,
            _ => {
                let k = make_keys(cloud, site, &endpoint).await?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| OsError::StoreKeysDir {
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                state::save(&path, &k, 0o600)?;
                k
            }
        };
        Ok(StoreAccess {
            site: site.to_owned(),
            endpoint,
            region: keys.region,
            access_key: keys.access,
            secret_key: keys.secret,
            netns: None,
        })
    }

    /// Every bucket of the plan's datasets made where it is missing; what was made.
    pub(crate) async fn ensure_buckets(&self, plan: &Plan) -> Result<Vec<String>> {
        let mut made = Vec::new();
        for (site, access) in self.store_accesses(plan).await?.clone() {
            let buckets: Vec<String> = plan
                .site_buckets(&site)
                .into_iter()
                .map(str::to_owned)
                .collect();
            let new = tokio::task::spawn_blocking(move || {
                hybridgrid_store::open(&access, |store| {
                    let mut new = Vec::new();
                    for b in &buckets {
                        if store.ensure_bucket(b)? {
                            new.push(format!("bucket {b} made in the object store of {site}"));
                        }
                    }
                    Ok(new)
                })
            })
            .await
            .map_err(|source| OsError::BucketTask { source })??;
            made.extend(new);
        }
        Ok(made)
    }

    /// `down`: the EC2 credentials `up` made for the cluster, deleted (site, outcome).
    pub(crate) async fn delete_store_keys(&self, sites: &[SiteOps]) -> Vec<(String, Result<()>)> {
        let mut out = Vec::new();
        for ops in sites {
            let site = ops.site.name.clone();
            let path = self.store_keys_path(&site);
            let kept: Option<StoreKeys> = match state::load(&path, KEYS_FORMAT_VERSION) {
                Ok(k) => k,
                Err(e) => {
                    out.push((site, Err(e.into())));
                    continue;
                }
            };
            let Some(k) = kept else { continue };
            let req = Req::delete(Service::Keystone, ec2_path(&k.user_id, Some(&k.access)));
            let r = ops
                .cloud
                .delete("delete EC2 credential", req)
                .await
                .map(|_| {
                    let _ = std::fs::remove_file(&path);
                });
            out.push((site, r));
        }
        out
    }
}

fn ec2_path(user_id: &str, access: Option<&str>) -> String {
    match access {
        Some(a) => format!("users/{user_id}/credentials/OS-EC2/{a}"),
        None => format!("users/{user_id}/credentials/OS-EC2"),
    }
}

async fn still_known(cloud: &Cloud, k: &StoreKeys) -> Result<bool> {
    let req = Req::get(Service::Keystone, ec2_path(&k.user_id, Some(&k.access)));
    Ok(cloud
        .get_opt("look up EC2 credential", req)
        .await?
        .is_some())
}

/// New EC2 credentials of the cloud's user for its project.
async fn make_keys(cloud: &Cloud, site: &str, endpoint: &str) -> Result<StoreKeys> {
    let req = Req::post(
        Service::Keystone,
        ec2_path(&cloud.user_id, None),
        json!({ "tenant_id": cloud.project_id }),
    );
    let made = cloud
        .create("create EC2 credential", req)
        .await
        .map_err(|e| OsError::StoreKeys {
            site: site.to_owned(),
            cloud: cloud.name.clone(),
            detail: hybridgrid_core::error_chain(&e),
        })?;
    let c = &made["credential"];
    let field = |f: &'static str| -> Result<String> {
        c[f].as_str()
            .map(str::to_owned)
            .ok_or_else(|| crate::api::missing(Service::Keystone, "the EC2 credential", f))
    };
    Ok(StoreKeys {
        format_version: KEYS_FORMAT_VERSION,
        cloud: cloud.name.clone(),
        user_id: cloud.user_id.clone(),
        endpoint: endpoint.to_owned(),
        region: cloud.region().unwrap_or_else(|| "RegionOne".into()),
        access: field("access")?,
        secret: field("secret")?,
    })
}
