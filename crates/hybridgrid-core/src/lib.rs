//! hybridgrid's core: the cluster file, its validation, deterministic addressing and the pure plan.
//!
//! Architecture invariant: nothing in this crate does I/O other than [`model::load`] reading the
//! cluster file, reads a clock or draws randomness other than [`keys::PrivateKey::generate`]. The
//! plan is a function of the validated cluster, the node public keys and the observed state.

pub mod addr;
pub mod change;
pub mod diag;
pub mod diff;
pub mod keys;
pub mod model;
pub mod node;
pub mod node_meta;
pub mod observed;
pub mod plan;
pub mod raw;
pub mod reconcile;
pub mod render;
pub mod slurm_conf;
pub mod slurm_version;
pub mod submit;
