//! The plan of a cluster against what exists: its layout ([`crate::plan`]) and the changes from
//! the observed state to it ([`crate::diff`]). The one entry point for `plan` and every round of
//! `up`.
//!
//! Architecture invariant: pure. The same cluster and observed state give the same plan, byte for
//! byte once serialised.

use crate::diff;
use crate::model::Cluster;
use crate::observed::Observed;
use crate::plan::{self, Plan};

/// Builds the plan and its changes.
pub fn plan(cluster: &Cluster, observed: &Observed) -> Plan {
    let mut p = plan::layout(cluster, observed);
    p.changes = diff::changes(&p, observed);
    p
}
