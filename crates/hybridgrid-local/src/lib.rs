//! The `local` provider: a hybridgrid cluster as emulated cloud sites on this Linux host, built
//! from network namespaces, bridges, veth pairs and nftables, plus the node agent that runs on
//! every node (here inside its namespaces, on a cloud VM as the same binary).
//!
//! Layout of cluster `C` (every name carries the prefix `hg-C-`):
//! - `hg-C-inet`: the cluster's emulated internet, a bridge on 198.51.100.0/24 (TEST-NET-2);
//! - per site `hg-C-<site>-sw` (the Neutron network: a bridge with port security) and
//!   `hg-C-<site>-rt` (the router: subnet gateway `.1`, 1:1 floating-IP NAT to the internet);
//! - per node `hg-C-<node>`: its own network namespace, plus UTS and mount namespaces held by one
//!   supervising process (`hybridgrid hold`).
//!
//! No namespace ever gets a link or a route to the host's own network.

mod apply;
pub mod crash;
pub mod datastore;
mod doctor;
mod down;
pub mod drift;
mod error;
pub mod host;
mod icmp;
pub mod infra;
pub mod ledger;
mod live;
pub mod machine;
pub mod names;
mod observe;
mod par;
pub mod power;
pub mod provider;
mod sh;
pub mod slurm;
mod status;
mod swift;
pub mod wan;

pub use down::gc;
pub use error::LocalError;
/// The node agent, which the local provider runs inside each node's namespaces.
pub use hybridgrid_agent as agent;
pub use provider::{ExecTarget, Local, Options};
