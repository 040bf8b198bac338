//! A site's object store as hybridgrid reaches it: the S3 endpoint, its region and the site's
//! keys ([`StoreAccess`]), and what a job at that site is given of it ([`StoreAccess::job_env`]).
//! Pure: providers find the values, `hybridgrid-store` makes the S3 calls.

use std::fmt;

/// The site's S3 endpoint and keys. `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreAccess {
    pub site: String,
    /// `http://host:port` or `https://…`, without a path.
    pub endpoint: String,
    /// The region the store signs with (S3 SigV4).
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// The network namespace (a name under `/run/netns`) from which this host reaches the
    /// endpoint: the local provider's emulated sites; `None`: this host's own network.
    pub netns: Option<String>,
}

impl fmt::Debug for StoreAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreAccess")
            .field("site", &self.site)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key", &"<hidden>")
            .field("secret_key", &"<hidden>")
            .field("netns", &self.netns)
            .finish()
    }
}

impl StoreAccess {
    /// The environment a job at the store's site gets (`KEY=value` lines for [`crate::jobs::JOB_ENV_FILE`]):
    /// `AWS_ENDPOINT_URL` (read by clients since 2023; older awscli and boto3 take
    /// `--endpoint-url "$AWS_ENDPOINT_URL"`), the keys, the region, and no instance-metadata
    /// lookups (there is no EC2 metadata service to ask).
    pub fn job_env(&self) -> String {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.as_str()),
            ("AWS_DEFAULT_REGION", self.region.as_str()),
            ("AWS_REGION", self.region.as_str()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| format!("{k}='{}'\n", v.replace('\'', "'\\''")))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> StoreAccess {
        StoreAccess {
            site: "giessen".into(),
            endpoint: "http://10.20.0.4:8080".into(),
            region: "giessen".into(),
            access_key: "hybridgrid:data".into(),
            secret_key: "s3cr'et".into(),
            netns: None,
        }
    }

    #[test]
    fn debug_shows_no_key() {
        let text = format!("{:?}", access());
        assert!(
            !text.contains("s3cr") && !text.contains("hybridgrid:data"),
            "{text}"
        );
    }

    #[test]
    fn the_job_env_is_shell_quoted() {
        let env = access().job_env();
        assert!(
            env.contains("AWS_SECRET_ACCESS_KEY='s3cr'\\''et'\n"),
            "{env}"
        );
        assert!(
            env.contains("AWS_ENDPOINT_URL='http://10.20.0.4:8080'\n"),
            "{env}"
        );
    }
}
