//! The core's integration tests: the diagnostics corpus, rendered-file snapshots with seeded keys,
//! property tests of the addressing, and checks against the real `wg` tools.

// Helpers of an integration test: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use hybridgrid_core::diff::{Observed, ObservedNode, ObservedSite};
use hybridgrid_core::keys::PrivateKey;
use hybridgrid_core::model::{Cluster, validate_text};
use hybridgrid_core::node::Role;
use hybridgrid_core::observed::ObservedVirtualAddress;
use hybridgrid_core::plan::Plan;
use hybridgrid_core::render;
use ipnet::Ipv4Net;
use proptest::prelude::*;

mod fuzz;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn load(path: &Path) -> Cluster {
    let text = std::fs::read_to_string(path).unwrap();
    let (cluster, diags) = validate_text(&text);
    cluster.unwrap_or_else(|| {
        panic!(
            "{} is invalid:\n{}",
            path.display(),
            diags.render("fixture")
        )
    })
}

fn load_text(text: &str) -> Cluster {
    let (cluster, diags) = validate_text(text);
    cluster.unwrap_or_else(|| panic!("invalid:\n{}", diags.render("text")))
}

/// Every relay has made its key (seeded; a pair's relays share theirs) and got a public IP from
/// TEST-NET-2 (a pair: on its virtual address).
fn observed_with_seeded_keys(cluster: &Cluster) -> Observed {
    let empty = hybridgrid_core::reconcile::plan(cluster, &Observed::default());
    let mut observed = Observed::default();
    for (i, node) in empty.nodes.iter().filter(|n| n.is_relay()).enumerate() {
        let public_ip = Some(Ipv4Addr::new(198, 51, 100, 10 + i as u8));
        if let Some(pair) = &node.pair {
            let site = observed.sites.entry(node.site.clone()).or_default();
            site.virtual_addresses
                .entry(pair.identity.clone())
                .or_insert(ObservedVirtualAddress {
                    address: pair.vip.addr(),
                    public_ip,
                });
        }
        observed.nodes.insert(
            node.name.clone(),
            ObservedNode {
                site: node.site.clone(),
                public_ip: public_ip.filter(|_| node.pair.is_none()),
                public_key: Some(PrivateKey::from_seed(node.mesh_name()).public_key()),
                applied: None,
                measured: None,
                instance: None,
            },
        );
    }
    observed
}

/// The state a provider would observe once `up` applied every change of `plan`.
fn observed_as_planned(plan: &Plan) -> Observed {
    let mut observed = Observed::default();
    for node in &plan.nodes {
        observed.nodes.insert(
            node.name.clone(),
            ObservedNode {
                site: node.site.clone(),
                public_ip: node.public_ip.filter(|_| node.pair.is_none()),
                public_key: node.wireguard.as_ref().and_then(|w| w.public_key),
                applied: Some(plan.node_config(node)),
                measured: None,
                instance: None,
            },
        );
    }
    for site in &plan.sites {
        observed.sites.insert(
            site.name.clone(),
            ObservedSite {
                network: true,
                wan: site.wan,
                flavors: Default::default(),
                security_groups: site
                    .security_groups
                    .iter()
                    .map(|g| (g.name.clone(), g.rules.clone()))
                    .collect(),
                allowed_address_pairs: site
                    .allowed_address_pairs
                    .iter()
                    .map(|p| (p.node.clone(), p.pairs.clone()))
                    .collect(),
                virtual_addresses: site
                    .pair
                    .iter()
                    .map(|p| {
                        let relay = plan.node(&p.relays[0]);
                        let seen = ObservedVirtualAddress {
                            address: p.vip,
                            public_ip: relay.and_then(|r| r.public_ip),
                        };
                        (p.identity.clone(), seen)
                    })
                    .collect(),
            },
        );
    }
    observed
}

fn seeded_plan(cluster: &Cluster) -> Plan {
    hybridgrid_core::reconcile::plan(cluster, &observed_with_seeded_keys(cluster))
}

#[test]
fn invalid_fixture_diagnostics() {
    let mut count = 0;
    insta::glob!("../../../fixtures", "invalid/*.yaml", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let (cluster, diags) = validate_text(&text);
        assert!(cluster.is_none(), "{} should be rejected", path.display());
        assert!(diags.has_errors());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(diags.render(&name));
        count += 1;
    });
    assert!(
        count >= 25,
        "the corpus has {count} malformed files; keep at least 25"
    );
}

#[test]
fn rendered_files_with_seeded_keys() {
    insta::glob!("../../../fixtures", "valid/*.yaml", |path| {
        let plan = seeded_plan(&load(path));
        let mut out = String::new();
        for (rel, content) in render::render(&plan) {
            // plan.json is the same data; its format has its own snapshot below.
            if rel != "plan.json" && !rel.ends_with("node.json") && !rel.ends_with(".json") {
                out.push_str(&format!("===== {rel}\n{content}"));
            }
        }
        insta::assert_snapshot!(out);
    });
}

#[test]
fn plan_json_document_for_the_seed() {
    let plan = seeded_plan(&load(&fixtures().join("valid/two-sites.yaml")));
    insta::assert_snapshot!(plan.to_json());
}

#[test]
fn plan_json_has_documented_node_fields() {
    let plan = hybridgrid_core::reconcile::plan(
        &load(&fixtures().join("valid/three-sites.yaml")),
        &Observed::default(),
    );
    let v: serde_json::Value = serde_json::from_str(&plan.to_json()).unwrap();
    assert_eq!(v["format_version"], 1);
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 7);
    for n in nodes {
        for field in ["name", "site", "role", "lan_ip"] {
            assert!(n.get(field).is_some(), "node lacks {field}: {n}");
        }
        assert!(["master", "gateway", "worker"].contains(&n["role"].as_str().unwrap()));
    }
}

#[test]
fn nothing_to_do_once_applied() {
    for f in ["two-sites", "three-sites", "five-sites", "standby-pairs"] {
        let cluster = load(&fixtures().join(format!("valid/{f}.yaml")));
        let first = seeded_plan(&cluster);
        assert!(!first.changes.is_empty());
        let again = hybridgrid_core::reconcile::plan(&cluster, &observed_as_planned(&first));
        assert_eq!(
            again.changes,
            vec![],
            "{f}: a second plan after applying should be empty"
        );
    }
}

#[test]
fn a_worker_without_cpus_or_memory_takes_its_flavors_size() {
    let text = "name: f\nprovider: openstack\nadmin_cidrs: [192.0.2.0/24]\nsites:\n  - name: a\n    \
                master: true\n    cloud: a\n    subnet: 10.1.0.0/24\n    external_network: ext\n    \
                gateway: { flavor: small, image: debian-12-generic }\n    workers:\n      - { count: 1, \
                flavor: big, image: debian-12-generic }\n      - { name: fixed, count: 1, cpus: 2, \
                memory: 3000, flavor: big, image: debian-12-generic }\n";
    let (cluster, diags) = validate_text(text);
    let cluster = cluster.unwrap_or_else(|| panic!("{diags:?}"));
    let size = |plan: &Plan, name: &str| {
        let n = plan.node(name).unwrap();
        (n.cpus, n.memory_mib)
    };
    // Before the cloud was asked: the defaults.
    let plan = hybridgrid_core::reconcile::plan(&cluster, &Observed::default());
    assert_eq!(size(&plan, "a-worker-1"), (1, 1024));
    let mut observed = Observed::default();
    observed
        .sites
        .entry("a".into())
        .or_default()
        .flavors
        .insert(
            "big".into(),
            hybridgrid_core::observed::FlavorSize {
                vcpus: 8,
                ram_mib: 16384,
            },
        );
    let plan = hybridgrid_core::reconcile::plan(&cluster, &observed);
    assert_eq!(size(&plan, "a-worker-1"), (8, 15360));
    // What the file says wins.
    assert_eq!(size(&plan, "a-fixed-1"), (2, 3000));
    // A booted node that counts less than its flavor (a kernel that keeps more, a CPU offline)
    // is declared with what it counts; one that counts more keeps the flavor's.
    let counted = |cpus, real_memory_mib| ObservedNode {
        site: "a".into(),
        public_ip: None,
        public_key: None,
        applied: None,
        measured: Some(hybridgrid_core::observed::MeasuredSize {
            cpus,
            real_memory_mib,
        }),
        instance: None,
    };
    observed
        .nodes
        .insert("a-worker-1".into(), counted(7, 15000));
    observed.nodes.insert("a-fixed-1".into(), counted(1, 1000));
    let plan = hybridgrid_core::reconcile::plan(&cluster, &observed);
    assert_eq!(size(&plan, "a-worker-1"), (7, 15000));
    assert_eq!(size(&plan, "a-fixed-1"), (2, 3000), "the file still wins");
    observed
        .nodes
        .insert("a-worker-1".into(), counted(16, 16000));
    let plan = hybridgrid_core::reconcile::plan(&cluster, &observed);
    assert_eq!(size(&plan, "a-worker-1"), (8, 15360));
}

#[test]
fn regression_issue_2_user_address_pairs_are_kept() {
    let cluster = load(&fixtures().join("valid/two-sites.yaml"));
    let plan1 = seeded_plan(&cluster);
    let mut observed = observed_as_planned(&plan1);
    // The user added a pair of their own, and one of ours is missing.
    let site = observed.sites.get_mut("giessen").unwrap();
    let pairs = site.allowed_address_pairs.get_mut("giessen-gw").unwrap();
    pairs.retain(|p| p.to_string() != "10.10.0.0/24");
    pairs.push("192.168.77.0/24".parse().unwrap());
    let plan2 = hybridgrid_core::reconcile::plan(&cluster, &observed);
    let summaries: Vec<String> = plan2.changes.iter().map(|c| c.summary()).collect();
    assert_eq!(
        summaries,
        vec!["+ giessen: allowed-address pairs on giessen-gw's port: 10.10.0.0/24".to_owned()],
        "only the missing pair is added; the user's pair is not removed"
    );
}

#[test]
fn scaling_a_site_touches_only_what_changed() {
    let text = std::fs::read_to_string(fixtures().join("valid/three-sites.yaml")).unwrap();
    let before = validate_text(&text).0.unwrap();
    let after = validate_text(&text.replace("      - count: 2\n", "      - count: 3\n"))
        .0
        .unwrap();
    let applied = observed_as_planned(&seeded_plan(&before));
    let plan = hybridgrid_core::reconcile::plan(&after, &applied);
    let summaries: Vec<String> = plan.changes.iter().map(|c| c.summary()).collect();
    assert!(
        summaries.contains(&"+ giessen: node giessen-worker-3 (worker)".to_owned()),
        "{summaries:#?}"
    );
    // Every node learns the new host; nobody's tunnel or routes change.
    for s in summaries.iter().filter(|s| !s.contains("giessen-worker-3")) {
        assert!(
            !s.contains("peer") && !s.contains("route") && !s.contains("rule"),
            "unexpected change: {s}"
        );
    }
}

#[test]
fn full_mesh_with_disjoint_allowed_ips() {
    let plan = seeded_plan(&load(&fixtures().join("valid/five-sites.yaml")));
    let relays: Vec<_> = plan.nodes.iter().filter(|n| n.is_relay()).collect();
    assert_eq!(relays.len(), 5);
    for r in &relays {
        let wg = r.wireguard.as_ref().unwrap();
        assert_eq!(wg.peers.len(), 4, "{} peers with every other relay", r.name);
        assert_eq!(wg.mtu, 1380);
        for p in &wg.peers {
            assert!(p.endpoint.is_some() && p.public_key.is_some());
            assert_eq!(p.persistent_keepalive, Some(15));
        }
    }
}

fn wg_tool(args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("`{}` is needed for this test (apt-get install --no-install-recommends wireguard-tools): {e}", args[0]));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn keys_match_the_real_wg_tool() {
    for _ in 0..5 {
        // Keys made by `wg genkey` parse and give the public key `wg pubkey` gives.
        let theirs = wg_tool(&["wg", "genkey"], "");
        let ours = PrivateKey::from_base64(&theirs).unwrap();
        assert_eq!(
            ours.to_base64(),
            theirs.trim(),
            "wg genkey output is already clamped"
        );
        assert_eq!(
            ours.public_key().to_base64(),
            wg_tool(&["wg", "pubkey"], &theirs).trim()
        );
        // Keys made by us are accepted by `wg pubkey` and agree.
        let mine = PrivateKey::generate().unwrap();
        assert_eq!(
            mine.public_key().to_base64(),
            wg_tool(&["wg", "pubkey"], &mine.to_base64()).trim()
        );
    }
}

#[test]
fn rendered_wireguard_files_pass_wg_quick_strip() {
    let dir = std::env::temp_dir().join(format!("hg-core-test-{}", std::process::id()));
    for f in ["two-sites", "three-sites", "five-sites"] {
        let plan = seeded_plan(&load(&fixtures().join(format!("valid/{f}.yaml"))));
        let files = render::render(&plan);
        let confs: BTreeMap<_, _> = files
            .iter()
            .filter(|(k, _)| k.ends_with("/wg0.conf"))
            .collect();
        assert_eq!(confs.len(), plan.sites.len());
        for (rel, content) in confs {
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("wg0.conf");
            std::fs::write(&path, content).unwrap();
            let stripped = wg_tool(&["wg-quick", "strip", path.to_str().unwrap()], "");
            for gone in ["Address", "MTU", "PostUp", "Table"] {
                assert!(
                    !stripped.lines().any(|l| l.starts_with(gone)),
                    "{rel}: strip left {gone}"
                );
            }
            assert!(
                !stripped.lines().any(|l| l.starts_with("PrivateKey")),
                "the key stays on the node"
            );
            let peers = stripped.matches("[Peer]").count();
            assert_eq!(
                peers,
                plan.sites.len() - 1,
                "{rel}: one peer per other relay"
            );
            assert!(stripped.contains("ListenPort"));
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A random but valid cluster file: 1–8 sites with distinct subnets of random size, workers
/// within capacity, and a tunnel range sized for the sites.
fn arb_cluster_yaml() -> impl Strategy<Value = String> {
    (1usize..8)
        .prop_flat_map(|n| {
            (
                Just(n),
                prop::collection::vec((22u8..=29, 0u32..40), n),
                0usize..n,
                prop::collection::vec(0u32..3, n),
            )
        })
        .prop_map(|(n, sites, master, groups)| {
            let mut y = String::from("name: prop\ntunnel:\n  cidr: 172.16.0.0/28\nsites:\n");
            for (i, ((prefix, workers), extra_groups)) in sites.iter().zip(&groups).enumerate() {
                let net: Ipv4Net = format!("10.{}.0.0/{prefix}", 100 + i).parse().unwrap();
                let cap = hybridgrid_core::addr::worker_capacity(net, false) as u32;
                let total = (*workers).min(cap);
                y.push_str(&format!("  - name: s{i}\n    subnet: {net}\n"));
                if i == master {
                    y.push_str("    master: true\n");
                }
                // Split the site's workers over 1 + extra_groups groups.
                let groups = 1 + extra_groups;
                y.push_str("    workers:\n");
                for g in 0..groups {
                    let count = total / groups + u32::from(g < total % groups);
                    y.push_str(&format!("      - name: g{g}\n        count: {count}\n"));
                }
            }
            let _ = n;
            y
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn addresses_are_unique_in_their_subnets_and_peers_disjoint(yaml in arb_cluster_yaml()) {
        let (cluster, diags) = validate_text(&yaml);
        let cluster = cluster.unwrap_or_else(|| panic!("{}\n{yaml}", diags.render("prop")));
        let plan = seeded_plan(&cluster);
        let mut seen = std::collections::BTreeSet::new();
        for node in &plan.nodes {
            let site = plan.site(&node.site).unwrap();
            prop_assert!(seen.insert(node.lan_ip), "{} collides", node.lan_ip);
            prop_assert!(site.subnet.contains(&node.lan_ip));
            prop_assert!(node.lan_ip != site.subnet.network() && node.lan_ip != site.subnet.broadcast());
            prop_assert!(node.lan_ip != site.router_ip && node.lan_ip != site.data_store_ip);
            if let Some(t) = node.tunnel_ip {
                prop_assert!(seen.insert(t), "tunnel {} collides", t);
                prop_assert!(plan.tunnel.cidr.contains(&t));
            }
            if let Some(wg) = &node.wireguard {
                let all: Vec<Ipv4Net> = wg.peers.iter().flat_map(|p| p.allowed_ips.clone()).collect();
                for (i, a) in all.iter().enumerate() {
                    for b in &all[i + 1..] {
                        prop_assert!(!a.contains(b) && !b.contains(a), "{} and {} overlap on {}", a, b, node.name);
                    }
                    prop_assert!(!a.contains(&node.lan_ip), "a peer claims the node's own subnet");
                }
            }
        }
        prop_assert_eq!(plan.nodes.len() as u64, cluster.sites.iter().map(|s| 1 + s.worker_count()).sum::<u64>());
    }

    #[test]
    fn the_plan_is_deterministic(yaml in arb_cluster_yaml()) {
        let cluster = validate_text(&yaml).0.unwrap();
        let a = seeded_plan(&cluster);
        let b = seeded_plan(&validate_text(&yaml).0.unwrap());
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.to_json(), b.to_json());
        prop_assert_eq!(render::render(&a), render::render(&b));
    }
}

#[test]
fn rendered_mss_clamp_is_valid_nftables() {
    let plan = seeded_plan(&load(&fixtures().join("valid/two-sites.yaml")));
    let files = render::render(&plan);
    let rel = "nodes/giessen-gw/etc/nftables.d/hybridgrid-mss.nft";
    let path = std::env::temp_dir().join(format!("hg-core-mss-{}.nft", std::process::id()));
    std::fs::write(&path, &files[rel]).unwrap();
    // `nft -c` parses and checks the ruleset without loading it.
    let out = Command::new("nft")
        .args(["-c", "-f", path.to_str().unwrap()])
        .output()
        .expect("`nft` is needed for this test (apt-get install --no-install-recommends nftables)");
    std::fs::remove_file(&path).ok();
    assert!(
        out.status.success(),
        "{rel}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fuzz_cluster_file_parser() {
    fuzz::fuzz(
        "cluster-file",
        fuzz::mutated_cluster_file(fuzz::seeds()),
        |text| {
            let (cluster, diags) = validate_text(text);
            prop_assert_eq!(cluster.is_none(), diags.has_errors());
            let shown = diags.render("fuzz.yaml");
            prop_assert!(diags.0.is_empty() || shown.contains("fuzz.yaml:"));
            // A file that validates also plans and renders (small ones: time is bounded).
            if let Some(c) = cluster
                && c.sites.iter().map(|s| 1 + s.worker_count()).sum::<u64>() <= 300
            {
                let plan = hybridgrid_core::reconcile::plan(&c, &Observed::default());
                render::render_each(&plan, &mut |_, _| {});
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_relay_metadata() {
    let c = load(&fixtures().join("valid/two-sites.yaml"));
    let plan = seeded_plan(&c);
    let relay = plan.nodes.iter().find(|n| n.is_relay()).unwrap();
    let base = plan.node_config_without_hosts(relay);
    fuzz::fuzz("relay-metadata", fuzz::metadata_items(), |text| {
        if let Ok(meta) = hybridgrid_core::node_meta::meta_from_json(text) {
            let _ = hybridgrid_core::node_meta::merge(&base, &meta);
        }
        Ok(())
    });
    fuzz::fuzz("peer-value", fuzz::peer_value(), |value| {
        let _ = hybridgrid_core::node_meta::parse_peer("a-master", value);
        Ok(())
    });
}

/// Inputs a fuzz run found failing (kept in `fixtures/fuzz/`) parse without a panic now.
#[test]
fn fuzz_corpus_replays() {
    for (path, text) in fuzz::corpus() {
        let (cluster, diags) = validate_text(&text);
        assert_eq!(cluster.is_none(), diags.has_errors(), "{}", path.display());
        let _ = hybridgrid_core::node_meta::meta_from_json(&text);
        let _ = hybridgrid_core::node_meta::parse_peer("a-master", &text);
    }
}

/// The controller's agent expands its partitions' host lists itself: as Slurm's own
/// `scontrol show hostnames` does (which needs no controller, only a configuration).
#[test]
fn host_lists_expand_as_scontrol_does() {
    let conf = std::env::temp_dir().join(format!("hg-hostlist-{}.conf", std::process::id()));
    std::fs::write(&conf, "ClusterName=t\nSlurmctldHost=localhost\n").unwrap();
    let theirs = |list: &str| -> std::io::Result<Vec<String>> {
        let out = Command::new("scontrol")
            .args(["show", "hostnames", list])
            .env("SLURM_CONF", &conf)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    };
    let lists = [
        "s0-worker-[1-10]",
        "a-worker-[1-2,5],b-gw,c-od-[3-4]",
        "n[08-11]",
        "giessen-worker-1",
        "r[1-2]n[01-03]",
    ];
    let answers: Vec<_> = lists.iter().map(|l| theirs(l)).collect();
    let _ = std::fs::remove_file(&conf);
    for (list, answer) in lists.iter().zip(answers) {
        let answer = answer
            .unwrap_or_else(|e| panic!("`scontrol` is needed for this test (slurm-client): {e}"));
        assert_eq!(hybridgrid_core::hostlist::expand(list), answer, "{list}");
    }
}

#[test]
fn a_relay_pair_is_one_end_of_the_mesh_with_one_key_and_address() {
    let plan = seeded_plan(&load(&fixtures().join("valid/standby-pairs.yaml")));
    let node = |n: &str| plan.node(n).unwrap_or_else(|| panic!("no node {n}"));
    let (a, b) = (node("giessen-gw-a"), node("giessen-gw-b"));
    assert_eq!((a.role, b.role), (Role::Gateway, Role::Gateway));
    assert_eq!(a.tunnel_ip, b.tunnel_ip);
    assert_eq!(a.wireguard, b.wireguard, "both relays hold the same device");
    assert_eq!(a.public_ip, b.public_ip);
    assert!(a.public_ip.is_some());
    assert_eq!(
        (a.lan_ip, b.lan_ip),
        (
            "10.20.0.253".parse().unwrap(),
            "10.20.0.254".parse().unwrap()
        )
    );
    let pair = a.pair.as_ref().unwrap();
    assert_eq!(pair.identity, "giessen-gw");
    assert_eq!(pair.partner, "giessen-gw-b");
    assert_eq!(pair.vip, "10.20.0.252/24".parse::<Ipv4Net>().unwrap());

    // Every other relay sees one peer per site: the pair by its identity.
    let peers: Vec<String> = node("heidelberg-gw")
        .wireguard
        .as_ref()
        .unwrap()
        .peers
        .iter()
        .map(|p| p.node.clone())
        .collect();
    assert_eq!(peers, ["bielefeld-gw", "giessen-gw"]);

    // On the master site the pair relays; the master is a node like the workers there.
    let master = node("bielefeld-master");
    assert!(!master.is_relay());
    assert!(master.public_ip.is_none() && master.wireguard.is_none());
    assert_eq!(master.lan_ip, "10.10.0.5".parse::<Ipv4Addr>().unwrap());
    for n in ["bielefeld-master", "bielefeld-worker-1", "giessen-worker-2"] {
        let config = plan.node_config(node(n));
        let vip = plan.site(&node(n).site).unwrap().pair.as_ref().unwrap().vip;
        assert!(!config.ip_forward, "{n}");
        assert!(
            config.routes.iter().all(|r| r.via == Some(vip)),
            "{n} routes through the pair's virtual address: {:?}",
            config.routes
        );
    }
    assert_eq!(plan.slurm.controller_addr, master.lan_ip);

    // Both relays' ports may send from the virtual address and carry the gateway group.
    let site = plan.site("giessen").unwrap();
    for pairs in &site.allowed_address_pairs {
        assert!(
            pairs.pairs.contains(&"10.20.0.252/32".parse().unwrap()),
            "{pairs:?}"
        );
    }
    assert_eq!(site.allowed_address_pairs.len(), 2);
    assert_eq!(
        site.security_groups[1].members,
        ["giessen-gw-a", "giessen-gw-b"]
    );
    let heidelberg_rules = &plan.site("heidelberg").unwrap().security_groups[1].rules;
    assert_eq!(
        heidelberg_rules.len(),
        2,
        "one rule per peer site: {heidelberg_rules:?}"
    );
}

#[test]
fn turning_standby_on_moves_no_worker_and_not_the_master() {
    let text = std::fs::read_to_string(fixtures().join("valid/standby-pairs.yaml")).unwrap();
    let single = text.replace("    gateway:\n      standby: true\n", "");
    assert_ne!(single, text);
    let with = seeded_plan(&load_text(&text));
    let without = seeded_plan(&load_text(&single));
    for n in without
        .nodes
        .iter()
        .filter(|n| !n.is_relay() || n.role == Role::Master)
    {
        let same = with
            .node(&n.name)
            .unwrap_or_else(|| panic!("{} is gone", n.name));
        assert_eq!(same.lan_ip, n.lan_ip, "{} moved", n.name);
    }
    assert_eq!(with.slurm.controller_addr, without.slurm.controller_addr);
    // The pair keeps the single gateway's name in the mesh, so peers keep its floating IP and
    // preshared keys.
    let giessen_peer = |p: &Plan| {
        p.node("heidelberg-gw")
            .unwrap()
            .wireguard
            .as_ref()
            .unwrap()
            .peers[1]
            .node
            .clone()
    };
    assert_eq!(giessen_peer(&with), giessen_peer(&without));
}

#[test]
fn a_pair_without_its_virtual_address_gets_it_then_its_public_ip() {
    let cluster = load(&fixtures().join("valid/standby-pairs.yaml"));
    let first = hybridgrid_core::reconcile::plan(&cluster, &Observed::default());
    let summaries: Vec<String> = first.changes.iter().map(|c| c.summary()).collect();
    let vip = summaries
        .iter()
        .position(|s| s == "+ giessen: virtual address 10.20.0.252 for relay pair giessen-gw")
        .unwrap_or_else(|| panic!("{summaries:#?}"));
    let fip = summaries
        .iter()
        .position(|s| s == "+ giessen: public IP for giessen-gw")
        .unwrap_or_else(|| panic!("{summaries:#?}"));
    assert!(vip < fip);
    assert!(
        !summaries
            .iter()
            .any(|s| s.contains("public IP for giessen-gw-")),
        "a pair's relays have no public IP of their own: {summaries:#?}"
    );
    assert!(
        !summaries
            .iter()
            .any(|s| s.contains("public IP for bielefeld-master")),
        "{summaries:#?}"
    );
}

#[test]
fn rendered_keepalived_files_pass_keepalived_config_test() {
    let dir = std::env::temp_dir().join(format!("hg-core-vrrp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plan = seeded_plan(&load(&fixtures().join("valid/standby-pairs.yaml")));
    let files = render::render(&plan);
    let confs: Vec<_> = files
        .iter()
        .filter(|(k, _)| k.ends_with("/keepalived.conf"))
        .collect();
    assert_eq!(confs.len(), 4, "two pairs of two relays");
    for (rel, content) in confs {
        let path = dir.join("keepalived.conf");
        std::fs::write(&path, content).unwrap();
        let out = Command::new("keepalived")
            .args(["--config-test", "--log-console", "-f"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!("`keepalived` is needed for this test (scripts/setup.sh): {e}")
            });
        assert!(
            out.status.success(),
            "{rel}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
