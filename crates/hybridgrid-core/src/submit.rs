//! Job placement by data locality: which partition a job goes to, and what it is told about its
//! datasets. Pure: the provider runs the resulting `sbatch` on the master.

use std::collections::BTreeMap;

use crate::plan::{DatasetPlan, Plan};

/// Where a job runs and what it is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The Slurm partition: the datasets' site, or the default partition without datasets.
    pub partition: String,
    /// The site the job is placed at, if the datasets decided it.
    pub site: Option<String>,
    /// Environment for the job: `HYBRIDGRID_SITE`, `HYBRIDGRID_DATASETS` (comma-separated names)
    /// and `HYBRIDGRID_DATASET_<NAME>` = the dataset's URL (name upper-cased, `-` → `_`).
    pub env: Vec<(String, String)>,
}

/// Why a job could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
pub enum PlacementError {
    /// unknown dataset `{name}`; the cluster file defines: {known}
    UnknownDataset { name: String, known: String },
    /// the datasets live at different sites ({sites}); a job runs at one site. Submit one job per site, or pass --allow-cross-site to read the others over the tunnel
    CrossSite { sites: String },
    /// unknown partition `{name}`; the cluster has: {known}
    UnknownPartition { name: String, known: String },
}

/// Places a job next to `datasets`. With `allow_cross_site`, datasets at several sites put the job
/// where most of them are (ties: the site listed first in the cluster file).
pub fn place(
    plan: &Plan,
    datasets: &[String],
    allow_cross_site: bool,
) -> Result<Placement, PlacementError> {
    let mut chosen: Vec<&DatasetPlan> = Vec::new();
    for name in datasets {
        let Some(d) = plan.datasets.iter().find(|d| &d.name == name) else {
            let known: Vec<&str> = plan.datasets.iter().map(|d| d.name.as_str()).collect();
            return Err(PlacementError::UnknownDataset {
                name: name.clone(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        };
        if !chosen.iter().any(|c| c.name == d.name) {
            chosen.push(d);
        }
    }
    let mut per_site: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &chosen {
        *per_site.entry(d.site.as_str()).or_default() += 1;
    }
    let site: Option<String> = match per_site.len() {
        0 => None,
        1 => per_site.keys().next().map(|s| (*s).to_owned()),
        _ if allow_cross_site => plan
            .sites
            .iter()
            .max_by_key(|s| {
                (
                    per_site.get(s.name.as_str()).copied().unwrap_or(0),
                    std::cmp::Reverse(plan.sites.iter().position(|x| x.name == s.name)),
                )
            })
            .map(|s| s.name.clone()),
        _ => {
            let sites: Vec<String> = per_site.keys().map(|s| (*s).to_owned()).collect();
            return Err(PlacementError::CrossSite {
                sites: sites.join(", "),
            });
        }
    };
    let partition = match &site {
        Some(s) => s.clone(),
        None => plan
            .slurm
            .partitions
            .iter()
            .find(|p| p.default)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| crate::model::ALL_PARTITION.to_owned()),
    };
    let mut env = Vec::new();
    if let Some(s) = &site {
        env.push(("HYBRIDGRID_SITE".to_owned(), s.clone()));
    }
    if !chosen.is_empty() {
        let names: Vec<&str> = chosen.iter().map(|d| d.name.as_str()).collect();
        env.push(("HYBRIDGRID_DATASETS".to_owned(), names.join(",")));
    }
    for d in &chosen {
        env.push((dataset_env_name(&d.name), d.url.clone()));
    }
    Ok(Placement {
        partition,
        site,
        env,
    })
}

/// `placement` sent to `partition` instead (`submit --partition`): the site is that partition's
/// when it is a site's, none when it is not (`all`); `HYBRIDGRID_SITE` follows.
pub fn with_partition(
    plan: &Plan,
    mut placement: Placement,
    partition: String,
) -> Result<Placement, PlacementError> {
    if !plan.slurm.partitions.iter().any(|x| x.name == partition) {
        let known: Vec<&str> = plan
            .slurm
            .partitions
            .iter()
            .map(|x| x.name.as_str())
            .collect();
        return Err(PlacementError::UnknownPartition {
            name: partition,
            known: known.join(", "),
        });
    }
    placement.site = plan
        .sites
        .iter()
        .find(|s| s.name == partition)
        .map(|s| s.name.clone());
    placement.env.retain(|(k, _)| k != "HYBRIDGRID_SITE");
    if let Some(site) = &placement.site {
        placement
            .env
            .insert(0, ("HYBRIDGRID_SITE".to_owned(), site.clone()));
    }
    placement.partition = partition;
    Ok(placement)
}

/// `HYBRIDGRID_DATASET_<NAME>`, upper-cased with `-` as `_`.
pub fn dataset_env_name(name: &str) -> String {
    format!(
        "HYBRIDGRID_DATASET_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Observed;
    use crate::model::validate_text;

    fn plan() -> Plan {
        let text = "name: t\nsites:\n  - name: a\n    master: true\n    subnet: 10.1.0.0/24\n    workers: [{count: 1}]\n  - name: b\n    subnet: 10.2.0.0/24\n    workers: [{count: 1}]\ndatasets:\n  - {name: genomes, site: b, bucket: genomes}\n  - {name: scans, site: a, location: http://store.example/scans/}\n  - {name: more-genomes, site: b, bucket: genomes, prefix: g2}\n";
        let (cluster, diags) = validate_text(text);
        crate::reconcile::plan(
            &cluster.unwrap_or_else(|| panic!("{}", diags.render("t"))),
            &Observed::default(),
        )
    }

    #[test]
    fn a_job_goes_to_its_datasets_site() {
        let p = place(&plan(), &["genomes".into()], false).unwrap();
        assert_eq!(p.partition, "b");
        assert!(
            p.env
                .contains(&("HYBRIDGRID_DATASET_GENOMES".into(), "s3://genomes/".into()))
        );
        assert!(p.env.contains(&("HYBRIDGRID_SITE".into(), "b".into())));
    }

    #[test]
    fn without_datasets_the_default_partition() {
        assert_eq!(place(&plan(), &[], false).unwrap().partition, "all");
    }

    #[test]
    fn datasets_at_two_sites_need_consent() {
        let names = vec![
            "genomes".to_owned(),
            "scans".to_owned(),
            "more-genomes".to_owned(),
        ];
        assert!(matches!(
            place(&plan(), &names, false),
            Err(PlacementError::CrossSite { .. })
        ));
        let p = place(&plan(), &names, true).unwrap();
        assert_eq!(p.partition, "b", "two of three datasets are at b");
        assert!(p.env.contains(&(
            "HYBRIDGRID_DATASET_MORE_GENOMES".into(),
            "s3://genomes/g2/".into()
        )));
        assert!(p.env.contains(&(
            "HYBRIDGRID_DATASET_SCANS".into(),
            "http://store.example/scans/".into()
        )));
    }

    #[test]
    fn unknown_datasets_are_named() {
        let e = place(&plan(), &["nope".into()], false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown dataset `nope`; the cluster file defines: genomes, scans, more-genomes"
        );
    }

    #[test]
    fn another_partition_moves_the_job_and_its_site() {
        let p = place(&plan(), &["genomes".into()], false).unwrap();
        let to_a = with_partition(&plan(), p.clone(), "a".into()).unwrap();
        assert_eq!(
            (to_a.partition.as_str(), to_a.site.as_deref()),
            ("a", Some("a"))
        );
        assert_eq!(to_a.env[0], ("HYBRIDGRID_SITE".into(), "a".into()));
        let anywhere = with_partition(&plan(), p.clone(), "all".into()).unwrap();
        assert_eq!(anywhere.site, None);
        assert!(anywhere.env.iter().all(|(k, _)| k != "HYBRIDGRID_SITE"));
        let e = with_partition(&plan(), p, "c".into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown partition `c`; the cluster has: a, b, all"
        );
    }
}
