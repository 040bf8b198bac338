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
pub mod power;
pub mod raw;
pub mod reconcile;
pub mod render;
pub mod slurm_conf;
pub mod slurm_version;
pub mod submit;

/// `error` and each of its causes whose text the error's own message does not already hold,
/// joined by ": " (the messages embed some causes, e.g. `{path}: {source}`).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}
