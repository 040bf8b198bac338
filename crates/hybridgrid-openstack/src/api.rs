//! One connection per cloud, a generic JSON endpoint for `openstack_sdk`, and the retry policy.
//!
//! The typed request builders of `openstack_sdk` cover every call used here, but a single
//! generic endpoint (method, service, path, query, JSON body, microversion) keeps the provider
//! short and lets it send fields the generated builders lack (`tags` on create).

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::Method;
use openstack_sdk::AsyncOpenStack;
use openstack_sdk::api::rest_endpoint_prelude::{
    ApiVersion, BodyError, QueryParams, RestEndpoint, ServiceType,
};
use openstack_sdk::api::{ApiError, QueryAsync, raw};
use openstack_sdk::config::ConfigFile;
use serde_json::Value;

use crate::error::{OsError, Result, Service};

// 0.22.8's build.rs generates no plugin anchors for the published manifest: without a reference
// from our own code the application-credential authenticator is not linked and
// `auth_type: v3applicationcredential` fails (testbed/openstack/SDK-NOTES.md, "Auth").
#[used]
static APPCRED: &openstack_sdk_auth_applicationcredential::ApplicationCredentialAuthenticator =
    &openstack_sdk_auth_applicationcredential::ANCHOR;

/// Highest Nova microversion used (Zed's Nova supports up to 2.93).
const NOVA_MICROVERSION: (u8, u8) = (2, 79);
const ATTEMPTS: u32 = 6;

/// Reads the clouds configuration: exactly `path` when given (the CLI passes
/// `OS_CLIENT_CONFIG_FILE` here), else the standard locations (`./clouds.yaml`,
/// `~/.config/openstack/`, `/etc/openstack/`, plus `secure.yaml`), as the `openstack` CLI does.
pub(crate) fn load_config(path: Option<&Path>) -> Result<ConfigFile> {
    // openstack_sdk reads `OS_CLIENT_CONFIG_PATH` but not `OS_CLIENT_CONFIG_FILE`, the variable
    // the `openstack` CLI and openstacksdk honour: the CLI's settings read it into `path`.
    let shown = path
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default();
    let err = |message: String| OsError::CloudsFile {
        path: shown.clone(),
        message,
    };
    match path {
        Some(p) => ConfigFile::builder()
            .add_source(p)
            .map_err(|e| err(e.to_string()))?
            .build()
            .map_err(|e| err(e.to_string())),
        None => ConfigFile::new().map_err(|e| err(e.to_string())),
    }
}

/// Counts create calls for the crash-injection test hook; once tripped every later create fails.
#[derive(Debug, Default)]
pub(crate) struct CrashSwitch {
    pub limit: Option<usize>,
    count: AtomicUsize,
    tripped: AtomicBool,
}

impl CrashSwitch {
    pub fn new(limit: Option<usize>) -> Self {
        CrashSwitch {
            limit,
            ..Default::default()
        }
    }
    fn check(&self) -> Result<()> {
        if self.tripped.load(Ordering::SeqCst) {
            return Err(OsError::CrashInjected(self.count.load(Ordering::SeqCst)));
        }
        Ok(())
    }
    /// After a create call went through: trips the switch at the limit.
    fn after_create(&self) -> Result<()> {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if self.limit.is_some_and(|l| n >= l) {
            self.tripped.store(true, Ordering::SeqCst);
            return Err(OsError::CrashInjected(n));
        }
        Ok(())
    }
}

/// Receives every API call as it ends (each attempt of a retried call): for finding where `up`
/// spends its time (the provisioning benchmark prints them).
#[derive(Clone)]
pub struct CallTrace(pub Arc<dyn Fn(&CallTiming<'_>) + Send + Sync>);

impl std::fmt::Debug for CallTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallTrace")
    }
}

/// One API call, for a [`CallTrace`].
#[derive(Debug)]
pub struct CallTiming<'a> {
    /// The clouds.yaml entry.
    pub cloud: &'a str,
    /// The call in words ("create port", "add router interface").
    pub what: &'a str,
    pub started: std::time::Instant,
    pub seconds: f64,
    /// The HTTP status of a failed call; `None` when it succeeded (or no response came).
    pub failed_status: Option<u16>,
}

/// A request to any OpenStack API, with a JSON body.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    method: Method,
    service: Service,
    path: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
    microversion: Option<ApiVersion>,
}

impl Req {
    fn new(method: Method, service: Service, path: impl Into<String>) -> Self {
        let microversion = matches!(service, Service::Nova)
            .then(|| ApiVersion::new(NOVA_MICROVERSION.0, NOVA_MICROVERSION.1));
        Req {
            method,
            service,
            path: path.into(),
            query: Vec::new(),
            body: None,
            microversion,
        }
    }
    pub fn get(service: Service, path: impl Into<String>) -> Self {
        Req::new(Method::GET, service, path)
    }
    pub fn post(service: Service, path: impl Into<String>, body: Value) -> Self {
        Req::new(Method::POST, service, path).body(body)
    }
    pub fn put(service: Service, path: impl Into<String>, body: Value) -> Self {
        Req::new(Method::PUT, service, path).body(body)
    }
    pub fn delete(service: Service, path: impl Into<String>) -> Self {
        Req::new(Method::DELETE, service, path)
    }
    pub fn q(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_owned(), value.into()));
        self
    }
    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

impl RestEndpoint for Req {
    fn method(&self) -> Method {
        self.method.clone()
    }
    fn endpoint(&self) -> Cow<'static, str> {
        self.path.clone().into()
    }
    fn service_type(&self) -> ServiceType {
        match self.service {
            Service::Keystone => ServiceType::Identity,
            Service::Neutron => ServiceType::Network,
            Service::Nova => ServiceType::Compute,
            Service::Glance => ServiceType::Image,
            Service::Swift => ServiceType::ObjectStore,
        }
    }
    fn parameters(&self) -> QueryParams<'_> {
        let mut p = QueryParams::default();
        for (k, v) in &self.query {
            p.push(k.as_str(), v.as_str());
        }
        p
    }
    fn body(&self) -> Result<Option<(&'static str, Vec<u8>)>, BodyError> {
        match &self.body {
            None => Ok(None),
            Some(b) => Ok(Some(("application/json", serde_json::to_vec(b)?))),
        }
    }
    fn api_version(&self) -> Option<ApiVersion> {
        None
    }
    fn min_version(&self) -> Option<ApiVersion> {
        self.microversion
    }
    fn max_version(&self) -> Option<ApiVersion> {
        self.microversion
    }
}

/// Whether a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads, deletes, PUTs: 409, 429, 5xx and connection errors are retried with backoff.
    Idempotent,
    /// Creates: only 429 (the request was refused, not processed). Anything else goes back to
    /// the caller, whose next round looks the resource up before creating it again.
    Create,
}

fn status_of<E: std::error::Error + Send + Sync + 'static>(e: &ApiError<E>) -> Option<u16> {
    match e {
        ApiError::OpenStack { status, .. }
        | ApiError::OpenStackService { status, .. }
        | ApiError::OpenStackUnrecognized { status, .. } => Some(status.as_u16()),
        _ => None,
    }
}

fn transient(status: Option<u16>, retry: Retry) -> bool {
    match (retry, status) {
        (Retry::Create, s) => s == Some(429),
        (Retry::Idempotent, None) => true,
        (Retry::Idempotent, Some(s)) => s == 409 || s == 429 || s >= 500,
    }
}

/// A connection to one cloud (one `clouds.yaml` entry).
pub(crate) struct Cloud {
    pub name: String,
    os: AsyncOpenStack,
    pub project_id: String,
    /// The token's user (whose application credentials the power service gets).
    pub user_id: String,
    crash: Arc<CrashSwitch>,
    trace: Option<CallTrace>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("name", &self.name)
            .field("project_id", &self.project_id)
            .finish()
    }
}

/// Why cloud `cloud` could not be connected to.
fn connect_error(cloud: &str, e: &dyn std::fmt::Display) -> OsError {
    OsError::Connect {
        cloud: cloud.to_owned(),
        message: e.to_string(),
    }
}

impl Cloud {
    pub async fn connect(
        config: &ConfigFile,
        site: &str,
        cloud: &str,
        crash: Arc<CrashSwitch>,
        trace: Option<CallTrace>,
    ) -> Result<Cloud> {
        let profile = config
            .get_cloud_config(cloud)
            .map_err(|e| connect_error(cloud, &e))?
            .ok_or_else(|| OsError::NoCloud {
                site: site.to_owned(),
                cloud: cloud.to_owned(),
            })?;
        Self::connect_with(&profile, cloud, crash, trace).await
    }

    /// This cloud with other credentials (`profile`, a `clouds.yaml` entry of it).
    pub async fn with_credentials(
        &self,
        profile: &openstack_sdk::config::CloudConfig,
    ) -> Result<Cloud> {
        Self::connect_with(profile, &self.name, self.crash.clone(), self.trace.clone()).await
    }

    /// Connects with `profile` (a `clouds.yaml` entry) as cloud `cloud`.
    async fn connect_with(
        profile: &openstack_sdk::config::CloudConfig,
        cloud: &str,
        crash: Arc<CrashSwitch>,
        trace: Option<CallTrace>,
    ) -> Result<Cloud> {
        let err = |e: &dyn std::fmt::Display| connect_error(cloud, e);
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            match AsyncOpenStack::builder(profile)
                .disable_auth_cache(true)
                .connect()
                .await
            {
                Ok(os) => {
                    // Catalogs may hold unversioned endpoints (Neutron): discover the versions.
                    for st in [
                        ServiceType::Network,
                        ServiceType::Compute,
                        ServiceType::Image,
                    ] {
                        os.discover_service_endpoint(&st)
                            .await
                            .map_err(|e| err(&e))?;
                    }
                    // Every list and quota call is scoped by it: a token without one (not
                    // scoped to a project) cannot build a cluster.
                    let info = os.get_auth_info();
                    let project_id = info
                        .as_ref()
                        .and_then(|i| i.token.project.as_ref().and_then(|p| p.id.clone()))
                        .ok_or_else(|| OsError::MissingField {
                            api: Service::Keystone,
                            resource: format!("the token for cloud `{cloud}`"),
                            field: "project.id",
                        })?;
                    let user_id = info.map(|i| i.token.user.id).unwrap_or_default();
                    return Ok(Cloud {
                        name: cloud.to_owned(),
                        os,
                        project_id,
                        user_id,
                        crash,
                        trace,
                    });
                }
                // Only a cloud that did not answer is worth another try: a refused credential
                // (401), a wrong auth method or a broken entry is the same the next time.
                Err(e) if !connect_transient(&e) => return Err(err(&e)),
                Err(e) => {
                    last = Some(e.to_string());
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Err(err(&last.unwrap_or_default()))
    }

    /// Sends `req`, retrying transient failures as `retry` allows. Returns the JSON body
    /// (`Value::Null` when empty).
    pub async fn call(&self, what: &str, req: &Req, retry: Retry) -> Result<Value> {
        let mut attempt = 0;
        loop {
            let started = std::time::Instant::now();
            let r = raw(req.clone()).query_async(&self.os).await;
            if let Some(trace) = &self.trace {
                (trace.0)(&CallTiming {
                    cloud: &self.name,
                    what,
                    started,
                    seconds: started.elapsed().as_secs_f64(),
                    failed_status: r.as_ref().err().and_then(status_of),
                });
            }
            match r {
                Ok(rsp) => {
                    let body: &[u8] = rsp.body();
                    if body.is_empty() {
                        return Ok(Value::Null);
                    }
                    return serde_json::from_slice(body).map_err(|e| OsError::Api {
                        cloud: self.name.clone(),
                        what: what.to_owned(),
                        status: Some(rsp.status().as_u16()),
                        message: format!("response is not JSON: {e}"),
                    });
                }
                Err(e) => {
                    let status = status_of(&e);
                    attempt += 1;
                    if attempt < ATTEMPTS && transient(status, retry) {
                        tokio::time::sleep(backoff(attempt - 1)).await;
                        continue;
                    }
                    return Err(OsError::Api {
                        cloud: self.name.clone(),
                        what: what.to_owned(),
                        status,
                        message: one_line(&e.to_string()),
                    });
                }
            }
        }
    }

    /// The region this connection uses (the clouds.yaml entry's `region_name`).
    pub fn region(&self) -> Option<String> {
        self.os.get_region_name()
    }

    /// The service catalog of the token.
    pub fn catalog(&self) -> Option<Vec<openstack_sdk::types::identity::v3::ServiceEndpoints>> {
        self.os.get_token_catalog()
    }

    pub async fn get(&self, what: &str, req: Req) -> Result<Value> {
        self.call(what, &req, Retry::Idempotent).await
    }

    /// GET that maps 404 to `None`.
    pub async fn get_opt(&self, what: &str, req: Req) -> Result<Option<Value>> {
        match self.call(what, &req, Retry::Idempotent).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A list call: the array under `key` (an answer without it is an error, never an empty
    /// list).
    pub async fn list(&self, what: &str, req: Req, key: &'static str) -> Result<Vec<Value>> {
        let api = req.service;
        let mut v = self.get(what, req).await?;
        match v.get_mut(key).map(Value::take) {
            Some(Value::Array(list)) => Ok(list),
            _ => Err(OsError::MissingField {
                api,
                resource: format!("the answer to `{what}`"),
                field: key,
            }),
        }
    }

    /// A create call, counted by the crash switch.
    pub async fn create(&self, what: &str, req: Req) -> Result<Value> {
        self.crash.check()?;
        let v = self.call(what, &req, Retry::Create).await?;
        self.crash.after_create()?;
        Ok(v)
    }

    /// DELETE; `Ok(false)` when it was already gone (404).
    pub async fn delete(&self, what: &str, req: Req) -> Result<bool> {
        match self.call(what, &req, Retry::Idempotent).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Whether a failed connect may work when tried again: the cloud did not answer, or answered
/// with a server error.
fn connect_transient(e: &openstack_sdk::OpenStackError) -> bool {
    use openstack_sdk::OpenStackError as E;
    match e {
        E::Communication { .. } | E::NoResponse { .. } => true,
        E::Http { status } => status.is_server_error() || status.as_u16() == 429,
        _ => false,
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(5))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A string field of an answer that the code needs: missing, or not a string, it is
/// [`OsError::MissingField`] naming `resource` (`"port c1-a-gw-port"`), `field` and the API.
/// Fields that may be absent are read as `Option` (`v[field].as_str()`) instead.
pub(crate) fn need_str(
    v: &Value,
    api: Service,
    resource: &str,
    field: &'static str,
) -> Result<String> {
    v[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| missing(api, resource, field))
}

/// The `id` of a resource in an answer ([`need_str`]).
pub(crate) fn need_id(v: &Value, api: Service, resource: &str) -> Result<String> {
    need_str(v, api, resource, "id")
}

/// An integer field of an answer that the code needs ([`need_str`]).
pub(crate) fn need_i64(
    v: &Value,
    api: Service,
    resource: &str,
    field: &'static str,
) -> Result<i64> {
    v[field]
        .as_i64()
        .ok_or_else(|| missing(api, resource, field))
}

pub(crate) fn missing(api: Service, resource: &str, field: &'static str) -> OsError {
    OsError::MissingField {
        api,
        resource: resource.to_owned(),
        field,
    }
}

/// The string values of an answer's array field (`tags`): absent is none.
pub(crate) fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// The APIs used.
pub(crate) const NET: Service = Service::Neutron;
pub(crate) const NOVA: Service = Service::Nova;
pub(crate) const GLANCE: Service = Service::Glance;
pub(crate) const SWIFT: Service = Service::Swift;

/// The `#[used]` anchor must be referenced from code that is compiled in.
pub(crate) fn anchor_appcred() -> bool {
    !std::ptr::eq(APPCRED, std::ptr::null())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_field_names_the_resource_the_field_and_the_api() {
        let v = serde_json::json!({ "port": { "name": "c1-a-gw-port" } });
        let e = need_id(&v["port"], Service::Neutron, "port c1-a-gw-port").expect_err("no id");
        assert_eq!(e.to_string(), "port c1-a-gw-port from Neutron has no `id`");
    }
}
