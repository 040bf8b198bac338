/// Why a lifecycle command failed.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum EngineError {
    /// provider {provider} does not support `{command}` yet{hint}
    Unsupported {
        provider: &'static str,
        command: &'static str,
        /// What to do instead, starting with "; " (or empty).
        hint: String,
    },
    /// the cluster did not settle after {rounds} rounds; still to do: {remaining}
    NotConverged { rounds: usize, remaining: String },
    /// the cluster is not as planned ({changes} changes, first: {first}): run `hybridgrid up` before `rotate`
    RotateBeforeUp { changes: usize, first: String },
    /// rotate: {node} failed to {step} (`hybridgrid up` reconnects the relays with the keys they have, then `rotate` again gives every node the same keys)
    RotateStep {
        step: &'static str,
        node: String,
        #[source]
        source: Box<EngineError>,
    },
    /// rotate: the relay pair {pair} shares one key, which `rotate` does not renew yet; rotate the preshared and munge keys alone (`--preshared --munge`)
    RotatePair { pair: String },
    /// rotate: the agent on {node} answered `{answer}`, not a public key
    RotateAnswer { node: String, answer: String },
    /// rotate: {node} does not show its new key after the switch; run `hybridgrid up`, then `rotate` again
    RotateNotSeen { node: String },
    /// rotate: after the switch the cluster is not as planned (first: {first}); run `hybridgrid up`, then `rotate` again
    RotateLeftChanges { first: String },
    /// rotate --when-due: the cluster file sets no `tunnel.rotate_every` to go by
    RotateEveryUnset,
    /// {0}
    State(#[from] crate::state::StateError),
    /// no node {0} in the cluster's plan
    NoSuchNode(String),
    /// {0}
    Provider(Box<dyn std::error::Error + Send + Sync>),
}

impl EngineError {
    /// A provider's own error, its message kept as it is.
    pub fn provider(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        EngineError::Provider(Box::new(e))
    }

    pub fn unsupported(provider: &'static str, command: &'static str, hint: &str) -> Self {
        EngineError::Unsupported {
            provider,
            command,
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!("; {hint}")
            },
        }
    }
}
