//! Stage two, what runs on the cluster: datasets and the Slurm options.

use std::collections::BTreeMap;

use crate::diag::did_you_mean;
use crate::raw::{self, RawCluster, Sp};

/// A prefix as S3 keys use it: no leading `/`, and a trailing `/` unless empty.
fn prefix_of(raw: &str) -> String {
    let p = raw.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

use super::{
    ALL_PARTITION, DEFAULT_SUSPEND_TIME, DataSource, Dataset, Provider, SLURMCTLD_PORT,
    SLURMD_PORT, Site, SlurmOptions, Validator,
};

/// The longest `slurm.suspend_time`: a week.
const MAX_SUSPEND_TIME: u32 = 7 * 24 * 3600;

impl Validator<'_> {
    pub(super) fn datasets(
        &mut self,
        raw: &RawCluster,
        sites: &[(&raw::RawSite, Option<Site>)],
    ) -> Vec<Dataset> {
        let site_names: Vec<&str> = sites
            .iter()
            .filter_map(|(rs, _)| rs.name.as_ref().map(|n| n.value.as_str()))
            .collect();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for (i, d) in raw.datasets.iter().enumerate() {
            let path = format!("datasets[{i}]");
            if let Some(n) = &d.name {
                self.name(n, format!("{path}.name"), "dataset", 40);
                if let Some(first) = seen.insert(&n.value, i) {
                    self.error(
                        n.pos,
                        format!("{path}.name"),
                        format!("dataset `{}` is defined twice", n.value),
                        format!("datasets[{first}] has this name already"),
                    );
                }
            }
            if let Some(s) = &d.site
                && !site_names.contains(&s.value.as_str())
            {
                let mut names = site_names.clone();
                names.dedup();
                let help = did_you_mean(&s.value, &names)
                    .map(|m| format!("did you mean `{m}`?"))
                    .unwrap_or_else(|| format!("the sites are: {}", names.join(", ")));
                self.error(
                    s.pos,
                    format!("{path}.site"),
                    format!("unknown site `{}`", s.value),
                    help,
                );
            }
            let source = self.data_source(d, &path);
            if let (Some(name), Some(site), Some(source)) = (&d.name, &d.site, source) {
                out.push(Dataset {
                    name: name.value.clone(),
                    site: site.value.clone(),
                    source,
                    size_gib: d.size_gib.as_ref().map(|s| s.value),
                });
            }
        }
        out
    }

    /// A dataset's `bucket` and `prefix`, or its `location`: one of the two forms.
    fn data_source(&mut self, d: &raw::RawDataset, path: &str) -> Option<DataSource> {
        match (&d.bucket, &d.location) {
            (Some(_), Some(l)) => {
                self.error(
                    l.pos,
                    format!("{path}.location"),
                    "a dataset has a `bucket` or a `location`, not both",
                    "keep `bucket` (and `prefix`) for data in the site's object store",
                );
                None
            }
            (Some(b), None) => {
                let bucket = self.bucket(b, format!("{path}.bucket"))?;
                let prefix = d
                    .prefix
                    .as_ref()
                    .map_or_else(String::new, |p| prefix_of(&p.value));
                Some(DataSource::Store { bucket, prefix })
            }
            (None, Some(l)) => {
                if let Some(p) = &d.prefix {
                    self.error(
                        p.pos,
                        format!("{path}.prefix"),
                        "`prefix` belongs to a dataset in a bucket",
                        "add `bucket:`, or write the whole URL as `location`",
                    );
                }
                self.location(l, format!("{path}.location"))
            }
            (None, None) => None,
        }
    }

    /// A bucket name S3 accepts everywhere: 3 to 63 lowercase letters, digits, `-` and `.`,
    /// starting and ending with a letter or digit.
    fn bucket(&mut self, b: &Sp<String>, path: String) -> Option<String> {
        let v = b.value.as_str();
        let edge_ok =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let valid = (3..=63).contains(&v.len())
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && edge_ok(v.chars().next())
            && edge_ok(v.chars().last())
            && !v.contains("..");
        if valid {
            return Some(v.to_owned());
        }
        self.error(
            b.pos,
            path,
            format!("`{v}` is not a valid bucket name"),
            "use 3 to 63 lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit",
        );
        None
    }

    /// Data outside the stores: a URL (`https://…`, `s3://…`) or an absolute path.
    fn location(&mut self, l: &Sp<String>, path: String) -> Option<DataSource> {
        if l.value.contains("://") || l.value.starts_with('/') {
            return Some(DataSource::Location {
                location: l.value.clone(),
            });
        }
        self.error(
            l.pos,
            path,
            format!("`{}` is neither a URL nor an absolute path", l.value),
            "data in the site's object store is a `bucket:` (with `prefix:`); \
             a `location` is data outside the stores, e.g. https://host/path/",
        );
        None
    }

    pub(super) fn slurm(
        &mut self,
        raw: &RawCluster,
        sites: &[(&raw::RawSite, Option<Site>)],
        provider: Option<Provider>,
    ) -> Option<SlurmOptions> {
        let s = &raw.slurm;
        let srun_port_range = self.srun_port_range(s);
        // WAN links drop and stall: be slower to declare nodes dead than Slurm's LAN defaults.
        let slurmd_timeout = self.timeout(&s.slurmd_timeout, 300, "slurmd_timeout");
        let message_timeout = self.timeout(&s.message_timeout, 30, "message_timeout");
        let resume_default = provider.unwrap_or(Provider::Local).default_resume_timeout();
        let resume_timeout = self.timeout(&s.resume_timeout, resume_default, "resume_timeout");
        let suspend_time = match &s.suspend_time {
            None => Some(DEFAULT_SUSPEND_TIME),
            Some(t) => match u32::try_from(t.value) {
                Ok(x) if (1..=MAX_SUSPEND_TIME).contains(&x) => Some(x),
                _ => {
                    self.error(
                        t.pos,
                        "slurm.suspend_time",
                        format!("{} seconds is out of range", t.value),
                        format!("use 1 to {MAX_SUSPEND_TIME} seconds (a week)"),
                    );
                    None
                }
            },
        };
        let default_partition = self.default_partition(s, sites);
        Some(SlurmOptions {
            srun_port_range: srun_port_range?,
            slurmd_timeout: slurmd_timeout?,
            message_timeout: message_timeout?,
            default_partition: default_partition?,
            suspend_time: suspend_time?,
            resume_timeout: resume_timeout?,
        })
    }

    /// `LOW-HIGH`, above 1023 and apart from Slurm's own ports (default 60001-63000).
    fn srun_port_range(&mut self, s: &raw::RawSlurm) -> Option<(u16, u16)> {
        let Some(r) = &s.srun_port_range else {
            return Some((60001, 63000));
        };
        let parsed = r.value.split_once('-').and_then(|(a, b)| {
            Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
        });
        match parsed {
            Some((lo, hi))
                if lo >= 1024
                    && lo <= hi
                    && !(lo..=hi).contains(&SLURMCTLD_PORT)
                    && !(lo..=hi).contains(&SLURMD_PORT) =>
            {
                Some((lo, hi))
            }
            _ => {
                self.error(
                    r.pos,
                    "slurm.srun_port_range",
                    format!("`{}` is not a usable port range", r.value),
                    "write LOW-HIGH above 1023 and apart from Slurm's 6817/6818, e.g. 60001-63000",
                );
                None
            }
        }
    }

    /// A Slurm timeout in seconds, 1 to 65533 (`default` when not given).
    fn timeout(&mut self, v: &Option<Sp<u64>>, default: u32, key: &str) -> Option<u32> {
        let Some(t) = v else {
            return Some(default);
        };
        match u32::try_from(t.value) {
            Ok(x) if (1..=65_533).contains(&x) => Some(x),
            _ => {
                self.error(
                    t.pos,
                    format!("slurm.{key}"),
                    format!("{} seconds is out of range", t.value),
                    "use 1 to 65533 seconds",
                );
                None
            }
        }
    }

    /// `all` or a site's name (default `all`).
    fn default_partition(
        &mut self,
        s: &raw::RawSlurm,
        sites: &[(&raw::RawSite, Option<Site>)],
    ) -> Option<String> {
        let site_names: Vec<&str> = sites
            .iter()
            .filter_map(|(rs, _)| rs.name.as_ref().map(|n| n.value.as_str()))
            .collect();
        match &s.default_partition {
            None => Some(ALL_PARTITION.to_owned()),
            Some(p) if p.value == ALL_PARTITION || site_names.contains(&p.value.as_str()) => {
                Some(p.value.clone())
            }
            Some(p) => {
                self.error(
                    p.pos,
                    "slurm.default_partition",
                    format!("there is no partition `{}`", p.value),
                    format!(
                        "partitions are `all` and one per site: {}",
                        site_names.join(", ")
                    ),
                );
                None
            }
        }
    }
}
