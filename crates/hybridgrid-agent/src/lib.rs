//! The node agent: everything that happens *on* a node, driven only by the node's
//! configuration ([`hybridgrid_core::plan::NodeConfig`]) — hostname, `/etc/hosts`, ICMP
//! redirects, forwarding, MSS clamp, routes, the WireGuard key and device, the Slurm role — the
//! same code on every provider (`hybridgrid agent apply` on a cloud VM, inside the node's
//! namespaces on the local provider). `supervise` keeps a node as configured; `pull` merges configuration the
//! cloud's metadata service delivers after boot.
//!
//! Architecture invariant: depends on core and wg only; knows no provider.

pub mod cli;
mod cut_off;
mod error;
mod node;
pub mod packages;
pub mod power;
pub mod pull;
pub mod relay_state;
mod report;
pub mod results;
pub mod rotate;
pub mod routes;
pub mod slurm;
pub mod store_reads;
mod supervise;
pub mod sys;
pub mod vrrp;
pub mod wg_impl;

pub use error::{AgentError, error_chain};
pub use node::{
    APPLIED_FILE, AgentReport, NODE_CONFIG_FILE, PUBLIC_KEY_FILE, WgStatus, apply,
    interface_exists, interface_listed, read_applied, read_public_key, wg_status,
};
pub use report::{NodeReport, report};
pub use supervise::supervise;
