//! Stage one of reading a cluster file: YAML → raw structs that keep every value's position.
//!
//! Nothing is interpreted here beyond the YAML types (string, integer, boolean, list, map), and
//! nothing stops at the first problem: unknown keys (with a "did you mean"), wrong types and missing
//! required keys are all collected, so one run of `validate` shows every mistake. The meaning of the
//! values (CIDRs, names, the topology) is checked by [`crate::model`].

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node};

use crate::diag::{Diagnostic, Diagnostics, Pos, did_you_mean};

mod wan;
pub use wan::RawWan;

/// A value with the position it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sp<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T> Sp<T> {
    pub fn new(value: T, pos: Pos) -> Self {
        Sp { value, pos }
    }
}

/// An integer or a word such as `auto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberOrWord {
    Number(u64),
    Word(String),
}

#[derive(Debug, Clone, Default)]
pub struct RawCluster {
    pub version: Option<Sp<u64>>,
    pub name: Option<Sp<String>>,
    pub provider: Option<Sp<String>>,
    pub admin_cidrs: Vec<Sp<String>>,
    pub ssh_public_key: Option<Sp<String>>,
    pub ssh_user: Option<Sp<String>>,
    pub tunnel: RawTunnel,
    pub sites: Vec<RawSite>,
    pub sites_pos: Pos,
    pub datasets: Vec<RawDataset>,
    pub slurm: RawSlurm,
    pub wan: Option<RawWan>,
}

#[derive(Debug, Clone, Default)]
pub struct RawTunnel {
    pub pos: Pos,
    pub cidr: Option<Sp<String>>,
    pub port: Option<Sp<u64>>,
    pub mtu: Option<Sp<NumberOrWord>>,
    pub keepalive: Option<Sp<u64>>,
    pub preshared_keys: Option<Sp<bool>>,
    pub rotate_every: Option<Sp<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct RawSite {
    pub pos: Pos,
    pub name: Option<Sp<String>>,
    pub master: Option<Sp<bool>>,
    pub subnet: Option<Sp<String>>,
    pub underlay_mtu: Option<Sp<u64>>,
    pub cloud: Option<Sp<String>>,
    pub network: Option<Sp<String>>,
    pub external_network: Option<Sp<String>>,
    pub gateway: RawNodeSpec,
    pub workers: Vec<RawWorkerGroup>,
    pub wan: Option<RawWan>,
}

/// Flavor and image of the master or gateway node, and whether the site has a standby relay.
#[derive(Debug, Clone, Default)]
pub struct RawNodeSpec {
    pub pos: Pos,
    pub flavor: Option<Sp<String>>,
    pub image: Option<Sp<String>>,
    pub standby: Option<Sp<bool>>,
}

#[derive(Debug, Clone, Default)]
pub struct RawWorkerGroup {
    pub pos: Pos,
    pub name: Option<Sp<String>>,
    pub count: Option<Sp<u64>>,
    pub cpus: Option<Sp<u64>>,
    pub memory: Option<Sp<u64>>,
    pub flavor: Option<Sp<String>>,
    pub image: Option<Sp<String>>,
    pub on_demand: Option<Sp<bool>>,
}

#[derive(Debug, Clone, Default)]
pub struct RawDataset {
    pub pos: Pos,
    pub name: Option<Sp<String>>,
    pub site: Option<Sp<String>>,
    pub location: Option<Sp<String>>,
    pub bucket: Option<Sp<String>>,
    pub prefix: Option<Sp<String>>,
    pub size_gib: Option<Sp<u64>>,
}

#[derive(Debug, Clone, Default)]
pub struct RawSlurm {
    pub pos: Pos,
    pub srun_port_range: Option<Sp<String>>,
    pub slurmd_timeout: Option<Sp<u64>>,
    pub message_timeout: Option<Sp<u64>>,
    pub default_partition: Option<Sp<String>>,
    pub suspend_time: Option<Sp<u64>>,
    pub resume_timeout: Option<Sp<u64>>,
}

/// Parses a cluster file's text. Returns the raw model (as complete as the text allows) and every
/// problem found on the way; a YAML syntax error yields no model.
pub fn parse(text: &str) -> (Option<RawCluster>, Diagnostics) {
    let mut r = Reader::default();
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .toplevel_mapping();
    let root = match marked_yaml::parse_yaml_with_options(0, text, options) {
        Ok(root) => root,
        Err(e) => {
            r.diags.push(load_error(e));
            return (None, r.diags);
        }
    };
    let cluster = r.cluster(&root);
    (Some(cluster), r.diags)
}

fn load_error(e: LoadError) -> Diagnostic {
    let at = |m: &marked_yaml::Marker| Pos::new(m.line(), m.column());
    match e {
        LoadError::TopLevelMustBeMapping(m) => Diagnostic::error(
            at(&m),
            "",
            "the cluster file must be a YAML mapping (`key: value` lines)",
        ),
        LoadError::TopLevelMustBeSequence(m) => {
            Diagnostic::error(at(&m), "", "unexpected top-level sequence")
        }
        LoadError::UnexpectedAnchor(m) => Diagnostic::error(
            at(&m),
            "",
            "YAML anchors are not supported in cluster files",
        )
        .with_help("write the value out where it is used"),
        LoadError::MappingKeyMustBeScalar(m) => {
            Diagnostic::error(at(&m), "", "a key must be a plain word")
        }
        LoadError::UnexpectedTag(m) => {
            Diagnostic::error(at(&m), "", "YAML tags (`!tag`) are not supported")
        }
        LoadError::ScanError(m, se) => {
            Diagnostic::error(at(&m), "", format!("YAML syntax error: {}", se.info())).with_help(
                "check the indentation and the `key: value` form of this line and the one above",
            )
        }
        LoadError::DuplicateKey(inner) => {
            let key = &inner.key;
            let pos = key.span().start().map(at).unwrap_or_default();
            let first = inner.prev_key.span().start().map(at).unwrap_or_default();
            Diagnostic::error(
                pos,
                key.as_str(),
                format!("key `{}` appears twice", key.as_str()),
            )
            .with_help(format!("it was first set at line {}; keep one", first.line))
        }
    }
}

fn pos_of(node: &Node) -> Pos {
    node.span()
        .start()
        .map(|m| Pos::new(m.line(), m.column()))
        .unwrap_or_default()
}

fn scalar_pos(node: &MarkedScalarNode) -> Pos {
    node.span()
        .start()
        .map(|m| Pos::new(m.line(), m.column()))
        .unwrap_or_default()
}

fn kind_of(node: &Node) -> &'static str {
    match node {
        Node::Scalar(s) if s.as_str().is_empty() => "nothing",
        Node::Scalar(_) => "a single value",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A mapping whose keys were checked against the allowed ones.
struct Map<'n> {
    node: &'n MarkedMappingNode,
    path: String,
    pos: Pos,
}

impl<'n> Map<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.node.get_node(key)
    }
    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

#[derive(Default)]
struct Reader {
    diags: Diagnostics,
}

impl Reader {
    /// Checks that `node` is a mapping and that all its keys are in `allowed`.
    fn map<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Map<'n>> {
        let Node::Mapping(m) = node else {
            self.diags.push(
                Diagnostic::error(
                    pos_of(node),
                    path,
                    format!("expected a mapping, found {}", kind_of(node)),
                )
                .with_help(format!(
                    "write `{}:` followed by indented `key: value` lines",
                    last_key(path)
                )),
            );
            return None;
        };
        for key in m.keys() {
            let k = key.as_str();
            if !allowed.contains(&k) {
                let mut d =
                    Diagnostic::error(scalar_pos(key), join(path, k), format!("unknown key `{k}`"));
                d = match did_you_mean(k, allowed) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("allowed keys here: {}", allowed.join(", "))),
                };
                self.diags.push(d);
            }
        }
        let first_key = m.keys().next().map(scalar_pos);
        Some(Map {
            node: m,
            path: path.to_owned(),
            pos: first_key.unwrap_or_else(|| pos_of(node)),
        })
    }

    fn missing(&mut self, map: &Map<'_>, key: &str, help: &str) {
        // A misspelt key was already reported with "did you mean `key`": once is enough.
        if map
            .node
            .keys()
            .any(|k| did_you_mean(k.as_str(), &[key]).is_some())
        {
            return;
        }
        self.diags.push(
            Diagnostic::error(
                map.pos,
                map.path(key),
                format!("missing required key `{key}`"),
            )
            .with_help(help),
        );
    }

    fn scalar<'n>(
        &mut self,
        map: &Map<'n>,
        key: &str,
        expected: &str,
    ) -> Option<&'n MarkedScalarNode> {
        let node = map.get(key)?;
        match node {
            Node::Scalar(s) if !s.as_str().is_empty() => Some(s),
            _ => {
                self.diags.push(Diagnostic::error(
                    pos_of(node),
                    map.path(key),
                    format!("expected {expected}, found {}", kind_of(node)),
                ));
                None
            }
        }
    }

    fn string(&mut self, map: &Map<'_>, key: &str) -> Option<Sp<String>> {
        let s = self.scalar(map, key, "a text value")?;
        Some(Sp::new(s.as_str().to_owned(), scalar_pos(s)))
    }

    fn uint(&mut self, map: &Map<'_>, key: &str) -> Option<Sp<u64>> {
        let s = self.scalar(map, key, "a whole number")?;
        match s.as_str().parse::<u64>() {
            Ok(v) => Some(Sp::new(v, scalar_pos(s))),
            Err(_) => {
                self.diags.push(Diagnostic::error(
                    scalar_pos(s),
                    map.path(key),
                    format!("expected a whole number, found `{}`", s.as_str()),
                ));
                None
            }
        }
    }

    fn boolean(&mut self, map: &Map<'_>, key: &str) -> Option<Sp<bool>> {
        let s = self.scalar(map, key, "true or false")?;
        match s.as_bool() {
            Some(v) => Some(Sp::new(v, scalar_pos(s))),
            None => {
                self.diags.push(Diagnostic::error(
                    scalar_pos(s),
                    map.path(key),
                    format!("expected true or false, found `{}`", s.as_str()),
                ));
                None
            }
        }
    }

    fn number_or_word(&mut self, map: &Map<'_>, key: &str) -> Option<Sp<NumberOrWord>> {
        let s = self.scalar(map, key, "a number or a word")?;
        let v = match s.as_str().parse::<u64>() {
            Ok(n) => NumberOrWord::Number(n),
            Err(_) => NumberOrWord::Word(s.as_str().to_owned()),
        };
        Some(Sp::new(v, scalar_pos(s)))
    }

    /// The items of a list under `key`, each with its path (`key[i]`).
    fn list<'n>(&mut self, map: &Map<'n>, key: &str) -> Vec<(String, &'n Node)> {
        let Some(node) = map.get(key) else {
            return Vec::new();
        };
        match node {
            Node::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{}[{i}]", map.path(key)), n))
                .collect(),
            _ => {
                self.diags.push(
                    Diagnostic::error(
                        pos_of(node),
                        map.path(key),
                        format!("expected a list, found {}", kind_of(node)),
                    )
                    .with_help("write each item on its own line starting with `- `"),
                );
                Vec::new()
            }
        }
    }

    fn string_list(&mut self, map: &Map<'_>, key: &str) -> Vec<Sp<String>> {
        let mut out = Vec::new();
        for (path, node) in self.list(map, key) {
            match node {
                Node::Scalar(s) if !s.as_str().is_empty() => {
                    out.push(Sp::new(s.as_str().to_owned(), scalar_pos(s)))
                }
                other => self.diags.push(Diagnostic::error(
                    pos_of(other),
                    path,
                    format!("expected a text value, found {}", kind_of(other)),
                )),
            }
        }
        out
    }

    fn cluster(&mut self, root: &Node) -> RawCluster {
        const KEYS: &[&str] = &[
            "version",
            "name",
            "provider",
            "admin_cidrs",
            "ssh_public_key",
            "ssh_user",
            "tunnel",
            "sites",
            "datasets",
            "slurm",
            "wan",
        ];
        let mut c = RawCluster::default();
        let Some(m) = self.map(root, "", KEYS) else {
            return c;
        };
        c.version = self.uint(&m, "version");
        c.name = self.string(&m, "name");
        if c.name.is_none() && m.get("name").is_none() {
            self.missing(
                &m,
                "name",
                "name the cluster, e.g. `name: demo`; it prefixes everything hybridgrid creates",
            );
        }
        c.provider = self.string(&m, "provider");
        c.admin_cidrs = self.string_list(&m, "admin_cidrs");
        c.ssh_public_key = self.string(&m, "ssh_public_key");
        c.ssh_user = self.string(&m, "ssh_user");
        if let Some(t) = m.get("tunnel") {
            c.tunnel = self.tunnel(t, &m.path("tunnel"));
        }
        match m.get("sites") {
            Some(node) => {
                c.sites_pos = pos_of(node);
                if matches!(node, Node::Sequence(items) if items.is_empty()) {
                    self.diags.push(
                        Diagnostic::error(c.sites_pos, "sites", "the cluster has no sites")
                            .with_help("list at least the master's site"),
                    );
                }
            }
            None => self.missing(
                &m,
                "sites",
                "list the cloud sites of the cluster under `sites:`",
            ),
        }
        for (path, node) in self.list(&m, "sites") {
            c.sites.push(self.site(node, &path));
        }
        for (path, node) in self.list(&m, "datasets") {
            c.datasets.push(self.dataset(node, &path));
        }
        if let Some(s) = m.get("slurm") {
            c.slurm = self.slurm(s, &m.path("slurm"));
        }
        if let Some(w) = m.get("wan") {
            c.wan = Some(self.wan(w, &m.path("wan")));
        }
        c
    }

    fn tunnel(&mut self, node: &Node, path: &str) -> RawTunnel {
        let mut t = RawTunnel {
            pos: pos_of(node),
            ..RawTunnel::default()
        };
        let Some(m) = self.map(
            node,
            path,
            &[
                "cidr",
                "port",
                "mtu",
                "keepalive",
                "preshared_keys",
                "rotate_every",
            ],
        ) else {
            return t;
        };
        t.cidr = self.string(&m, "cidr");
        t.port = self.uint(&m, "port");
        t.mtu = self.number_or_word(&m, "mtu");
        t.keepalive = self.uint(&m, "keepalive");
        t.preshared_keys = self.boolean(&m, "preshared_keys");
        t.rotate_every = self.string(&m, "rotate_every");
        t
    }

    fn site(&mut self, node: &Node, path: &str) -> RawSite {
        const KEYS: &[&str] = &[
            "name",
            "master",
            "subnet",
            "underlay_mtu",
            "cloud",
            "network",
            "external_network",
            "gateway",
            "workers",
            "wan",
        ];
        let mut s = RawSite {
            pos: pos_of(node),
            ..RawSite::default()
        };
        let Some(m) = self.map(node, path, KEYS) else {
            return s;
        };
        s.name = self.string(&m, "name");
        if m.get("name").is_none() {
            self.missing(&m, "name", "give the site a short name such as `giessen`");
        }
        s.master = self.boolean(&m, "master");
        s.subnet = self.string(&m, "subnet");
        if m.get("subnet").is_none() {
            self.missing(
                &m,
                "subnet",
                "give the site's private subnet, e.g. `subnet: 10.20.0.0/24`",
            );
        }
        s.underlay_mtu = self.uint(&m, "underlay_mtu");
        s.cloud = self.string(&m, "cloud");
        s.network = self.string(&m, "network");
        s.external_network = self.string(&m, "external_network");
        // On the master site `gateway` describes the master itself: it is that site's relay node.
        if let Some(g) = m.get("gateway") {
            s.gateway = self.node_spec(g, &m.path("gateway"));
        }
        for (path, node) in self.list(&m, "workers") {
            s.workers.push(self.worker_group(node, &path));
        }
        if let Some(w) = m.get("wan") {
            s.wan = Some(self.wan(w, &m.path("wan")));
        }
        s
    }

    fn node_spec(&mut self, node: &Node, path: &str) -> RawNodeSpec {
        let mut n = RawNodeSpec {
            pos: pos_of(node),
            ..RawNodeSpec::default()
        };
        let Some(m) = self.map(node, path, &["flavor", "image", "standby"]) else {
            return n;
        };
        n.flavor = self.string(&m, "flavor");
        n.image = self.string(&m, "image");
        n.standby = self.boolean(&m, "standby");
        n
    }

    fn worker_group(&mut self, node: &Node, path: &str) -> RawWorkerGroup {
        let mut w = RawWorkerGroup {
            pos: pos_of(node),
            ..RawWorkerGroup::default()
        };
        let Some(m) = self.map(
            node,
            path,
            &[
                "name",
                "count",
                "cpus",
                "memory",
                "flavor",
                "image",
                "on_demand",
            ],
        ) else {
            return w;
        };
        w.name = self.string(&m, "name");
        w.count = self.uint(&m, "count");
        if m.get("count").is_none() {
            self.missing(
                &m,
                "count",
                "say how many workers this group has, e.g. `count: 2`",
            );
        }
        w.cpus = self.uint(&m, "cpus");
        w.memory = self.uint(&m, "memory");
        w.flavor = self.string(&m, "flavor");
        w.image = self.string(&m, "image");
        w.on_demand = self.boolean(&m, "on_demand");
        w
    }

    fn dataset(&mut self, node: &Node, path: &str) -> RawDataset {
        let mut d = RawDataset {
            pos: pos_of(node),
            ..RawDataset::default()
        };
        let keys = ["name", "site", "bucket", "prefix", "location", "size_gib"];
        let Some(m) = self.map(node, path, &keys) else {
            return d;
        };
        d.name = self.string(&m, "name");
        d.site = self.string(&m, "site");
        d.location = self.string(&m, "location");
        d.bucket = self.string(&m, "bucket");
        d.prefix = self.string(&m, "prefix");
        d.size_gib = self.uint(&m, "size_gib");
        for key in ["name", "site"] {
            if m.get(key).is_none() {
                self.missing(
                    &m,
                    key,
                    "a dataset needs `name`, `site` and a `bucket` (or a `location`)",
                );
            }
        }
        if m.get("bucket").is_none() && m.get("location").is_none() {
            self.missing(
                &m,
                "bucket",
                "a dataset lives in a bucket of its site's object store (`bucket`, `prefix`), \
                 or outside the stores at a `location` (a URL)",
            );
        }
        d
    }

    fn slurm(&mut self, node: &Node, path: &str) -> RawSlurm {
        let mut s = RawSlurm {
            pos: pos_of(node),
            ..RawSlurm::default()
        };
        let keys = [
            "srun_port_range",
            "slurmd_timeout",
            "message_timeout",
            "default_partition",
            "suspend_time",
            "resume_timeout",
        ];
        let Some(m) = self.map(node, path, &keys) else {
            return s;
        };
        s.srun_port_range = self.string(&m, "srun_port_range");
        s.slurmd_timeout = self.uint(&m, "slurmd_timeout");
        s.message_timeout = self.uint(&m, "message_timeout");
        s.default_partition = self.string(&m, "default_partition");
        s.suspend_time = self.uint(&m, "suspend_time");
        s.resume_timeout = self.uint(&m, "resume_timeout");
        s
    }
}

fn last_key(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}
