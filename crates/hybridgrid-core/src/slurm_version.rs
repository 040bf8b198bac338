//! Whether the Slurm versions of a cluster's nodes can run together, by Slurm's own rules: the
//! controller is never older than a node's slurmd, and supports slurmd of at most two major
//! releases before its own; and what hybridgrid itself uses (dynamic nodes, `slurmd -Z`) needs
//! 22.05. Nodes get Slurm from their image's distribution (Debian 12: 22.05, Ubuntu 22.04:
//! 21.08, Ubuntu 24.04: 23.11), so images decide. Pure.

use std::fmt;

/// Slurm's major releases in order (`YY.MM`); a version between them counts by its place.
const MAJOR_RELEASES: [(u32, u32); 12] = [
    (20, 2),
    (20, 11),
    (21, 8),
    (22, 5),
    (23, 2),
    (23, 11),
    (24, 5),
    (24, 11),
    (25, 5),
    (25, 11),
    (26, 5),
    (26, 11),
];

/// The oldest Slurm hybridgrid runs: dynamic nodes (`slurmd -Z`) came with 22.05.
pub const OLDEST: SlurmVersion = SlurmVersion {
    major: 22,
    minor: 5,
    patch: 0,
};

/// How many major releases older than slurmctld a slurmd may be.
const RELEASES_BEHIND: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlurmVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl SlurmVersion {
    /// From what `slurmd -V` prints (`slurm 22.05.8`, `slurm-wlm 21.08.5`) or the bare version.
    pub fn parse(text: &str) -> Option<SlurmVersion> {
        let v = text.split_whitespace().last()?;
        let mut parts = v.split(['.', '-']).map(str::parse::<u32>);
        Some(SlurmVersion {
            major: parts.next()?.ok()?,
            minor: parts.next()?.ok()?,
            patch: parts.next().and_then(Result::ok).unwrap_or(0),
        })
    }

    /// Its place among the major releases (a version past the last known one counts as newer).
    fn release_index(self) -> usize {
        MAJOR_RELEASES
            .iter()
            .rposition(|&(y, m)| (y, m) <= (self.major, self.minor))
            .map_or(0, |i| {
                i + usize::from((self.major, self.minor) > MAJOR_RELEASES[MAJOR_RELEASES.len() - 1])
            })
    }
}

impl fmt::Display for SlurmVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}.{}", self.major, self.minor, self.patch)
    }
}

/// One node's Slurm, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSlurm {
    pub node: String,
    pub image: String,
    pub version: SlurmVersion,
    pub controller: bool,
}

impl NodeSlurm {
    fn describe(&self) -> String {
        format!(
            "{} (image {}) has Slurm {}",
            self.node, self.image, self.version
        )
    }
}

/// Every reason `nodes` cannot run together, in plain words naming the nodes, their images and
/// versions; empty when they can.
pub fn problems(nodes: &[NodeSlurm]) -> Vec<String> {
    let mut problems: Vec<String> = nodes
        .iter()
        .filter(|n| n.version < OLDEST)
        .map(|n| {
            format!(
                "{}: hybridgrid needs Slurm {OLDEST} or newer (dynamic nodes); use an image \
                 whose distribution ships it (Debian 12, Ubuntu 24.04)",
                n.describe()
            )
        })
        .collect();
    let Some(ctld) = nodes.iter().find(|n| n.controller) else {
        return problems;
    };
    for n in nodes.iter().filter(|n| !n.controller) {
        if n.version.release_index() > ctld.version.release_index() {
            problems.push(format!(
                "{} but the controller {}: slurmctld must not be older than any slurmd; give the \
                 master an image with the newer Slurm",
                n.describe(),
                ctld.describe()
            ));
        } else if ctld.version.release_index() - n.version.release_index() > RELEASES_BEHIND {
            problems.push(format!(
                "{} but the controller {}: slurmctld supports slurmd of at most {RELEASES_BEHIND} \
                 major releases before its own; use images of closer releases",
                n.describe(),
                ctld.describe()
            ));
        }
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(name: &str, image: &str, v: &str, controller: bool) -> NodeSlurm {
        NodeSlurm {
            node: name.into(),
            image: image.into(),
            version: SlurmVersion::parse(v).unwrap(),
            controller,
        }
    }

    #[test]
    fn versions_parse_as_slurm_prints_them() {
        assert_eq!(
            SlurmVersion::parse("slurm 22.05.8").unwrap().to_string(),
            "22.05.8"
        );
        assert_eq!(
            SlurmVersion::parse("slurm-wlm 21.08.5")
                .unwrap()
                .to_string(),
            "21.08.5"
        );
        assert_eq!(SlurmVersion::parse("23.11").unwrap().to_string(), "23.11.0");
        assert_eq!(SlurmVersion::parse("slurm"), None);
    }

    #[test]
    fn one_debian_release_everywhere_is_fine() {
        let nodes = [
            node("a-master", "debian-12", "slurm 22.05.8", true),
            node("b-worker-1", "debian-12", "slurm 22.05.8", false),
        ];
        assert!(problems(&nodes).is_empty());
    }

    #[test]
    fn ubuntu_22_04s_slurm_is_too_old_for_dynamic_nodes() {
        let nodes = [
            node("a-master", "Ubuntu-22.04", "slurm-wlm 21.08.5", true),
            node("b-worker-1", "Ubuntu-22.04", "slurm-wlm 21.08.5", false),
        ];
        let p = problems(&nodes);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("a-master (image Ubuntu-22.04) has Slurm 21.08.5"),
            "{p:?}"
        );
        assert!(p[0].contains("22.05.0 or newer"), "{p:?}");
    }

    #[test]
    fn a_controller_older_than_a_worker_or_too_far_ahead_is_refused() {
        let older_ctld = [
            node("a-master", "debian-12", "22.05.8", true),
            node("b-worker-1", "Ubuntu-24.04", "23.11.4", false),
        ];
        let p = problems(&older_ctld);
        assert!(p.len() == 1 && p[0].contains("must not be older"), "{p:?}");
        let far = [
            node("a-master", "debian-13", "24.11.5", true),
            node("b-worker-1", "debian-12", "22.05.8", false),
        ];
        let p = problems(&far);
        assert!(
            p.len() == 1 && p[0].contains("at most 2 major releases"),
            "{p:?}"
        );
        let near = [
            node("a-master", "Ubuntu-24.04", "23.11.4", true),
            node("b-worker-1", "debian-12", "22.05.8", false),
        ];
        assert!(problems(&near).is_empty());
    }
}
