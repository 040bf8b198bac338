//! hybridgrid's core: the cluster file, its validation, deterministic addressing and the pure plan.
//!
//! Architecture invariant: nothing in this crate does I/O other than [`model::load`] reading the
//! cluster file, reads a clock or draws randomness other than [`keys::PrivateKey::generate`]. The
//! plan is a function of the validated cluster, the node public keys and the observed state.

pub mod addr;
pub mod change;
pub mod diag;
pub mod diff;
pub mod hostlist;
pub mod jobs;
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
pub mod store;
pub mod submit;
pub mod vrrp;
pub mod wg_status;

/// `error` and its causes, joined by ": ", each cause once: a level whose text equals the one
/// before it (a transparent wrapper, `/// {0}` with `#[from]`) is skipped. An error's message
/// never repeats its own `#[source]`, so nothing else needs skipping.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut previous = text.clone();
    let mut cause = error.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if more != previous {
            text.push_str(": ");
            text.push_str(&more);
        }
        previous = more;
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    /// The cause of a cause, and a transparent wrapper around the middle error.
    #[derive(Debug, displaydoc::Display, thiserror::Error)]
    enum Inner {
        /// cannot read {0}
        Read(String, #[source] std::io::Error),
    }

    #[derive(Debug, displaydoc::Display, thiserror::Error)]
    enum Outer {
        /// {0}
        Inner(#[from] Inner),
    }

    #[test]
    fn error_chain_prints_each_cause_once_and_skips_a_transparent_level() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Outer::from(Inner::Read("ledger.json".into(), io));
        assert_eq!(error_chain(&e), "cannot read ledger.json: no such file");
        // A cause whose text merely occurs in an earlier level is still printed.
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "ledger");
        let e = Inner::Read("ledger".into(), io);
        assert_eq!(error_chain(&e), "cannot read ledger: ledger");
    }
}
