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
