//! `rotate` on a running three-site cluster: every relay's WireGuard key, every pair's preshared
//! key and the munge key change while workers of every pair of sites ping each other ten times
//! a second and a job runs.

use std::process::{Child, Command};
use std::time::Duration;

use super::{Lab, longest_gap, start_ping, wait_until};
use crate::secrets;

const THREE_SITES: &str = "version: 1
name: x
tunnel:
  cidr: 10.0.0.0/24
  rotate_every: 10m
sites:
  - name: bielefeld
    master: true
    subnet: 10.10.0.0/24
    workers:
      - count: 1
  - name: giessen
    subnet: 10.20.0.0/24
    workers:
      - count: 1
  - name: heidelberg
    subnet: 10.30.0.0/24
    workers:
      - count: 1
datasets:
  - name: reads
    site: giessen
    bucket: reads
";

const RELAYS: [&str; 3] = ["bielefeld-master", "giessen-gw", "heidelberg-gw"];
const SLURM_NODES: [&str; 4] = [
    "bielefeld-master",
    "bielefeld-worker-1",
    "giessen-worker-1",
    "heidelberg-worker-1",
];

fn wg_show(lab: &Lab, relay: &str, what: &str) -> String {
    lab.exec_ok(relay, &["wg", "show", "wg0", what])
}

fn munge_key_sum(lab: &Lab, node: &str) -> String {
    lab.exec_ok(node, &["md5sum", "/etc/munge/munge.key"])
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn job_state(lab: &Lab, id: &str) -> String {
    let out = lab.exec_ok("bielefeld-master", &["scontrol", "-o", "show", "job", id]);
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .unwrap_or("")
        .to_owned()
}

#[test]
fn rotate_changes_every_key_with_no_ping_gap_over_1s_and_a_running_job_completes() {
    let Some(lab) = Lab::with_text(THREE_SITES, "rot") else {
        return;
    };
    lab.up();
    super::slurm::wait_idle(
        &lab,
        &[
            "bielefeld-worker-1",
            "giessen-worker-1",
            "heidelberg-worker-1",
        ],
    );
    let public_before: Vec<String> = RELAYS
        .iter()
        .map(|r| wg_show(&lab, r, "public-key"))
        .collect();
    let preshared_before: Vec<String> = RELAYS
        .iter()
        .map(|r| wg_show(&lab, r, "preshared-keys"))
        .collect();
    let munge_before = munge_key_sum(&lab, "bielefeld-master");
    keys_fresh_from_up_are_not_due(&lab);

    let pings: Vec<(&str, Child)> = [
        ("bielefeld-worker-1", "giessen-worker-1"),
        ("bielefeld-worker-1", "heidelberg-worker-1"),
        ("giessen-worker-1", "heidelberg-worker-1"),
    ]
    .into_iter()
    .map(|(a, b)| (a, start_ping(&lab, a, b, 20)))
    .collect();
    std::thread::sleep(Duration::from_secs(3));
    // Through `submit`: the job loads the results store's token when it starts and uploads its
    // output after the rotation changed it.
    let script = lab.root.join("across-the-rotation.sh");
    std::fs::write(&script, "sleep 12\necho survived\n").unwrap();
    let job = lab.hg_ok(&[
        "submit",
        "-f",
        lab.f(),
        "--partition",
        "giessen",
        "--parsable",
        "--",
        script.to_str().unwrap(),
    ]);
    let job = job.lines().next().unwrap().trim().to_owned();
    wait_until("the job runs", Duration::from_secs(10), || {
        job_state(&lab, &job) == "RUNNING"
    });

    // What a timer runs: due once the oldest key is 10 minutes old (made so here).
    let munge_key = lab.state().join(&lab.name).join("munge.key");
    let aged = Command::new("touch")
        .args(["-d", "20 minutes ago"])
        .arg(&munge_key)
        .status()
        .unwrap();
    assert!(aged.success());
    let status = lab.hg_ok(&["status", "-f", lab.f(), "--no-ping"]);
    assert!(
        status.contains("due (tunnel.rotate_every 10m): run `hybridgrid rotate`"),
        "{status}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&lab.hg_ok(&["rotate", "-f", lab.f(), "--when-due", "--json"]))
            .unwrap();
    assert!(report.get("not_due").is_none(), "{report:#}");
    eprintln!("rotate: {report:#}");
    assert_eq!(report["relays"].as_array().unwrap().len(), 3, "{report:#}");
    assert_eq!(report["preshared_pairs"], 3, "{report:#}");
    assert_eq!(
        report["munge_nodes"].as_array().unwrap().len(),
        4,
        "{report:#}"
    );

    for (ping_from, child) in pings {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let gap = longest_gap(&text);
        eprintln!("{ping_from}: longest gap {gap:.2}s");
        assert!(gap <= 1.0, "{ping_from}: a gap of {gap:.2}s:\n{text}");
    }
    wait_until("the job completes", Duration::from_secs(30), || {
        job_state(&lab, &job) == "COMPLETED"
    });
    the_output_arrived_with_the_new_token(&lab, &job);

    // Every relay has a new key, every pair a new preshared key on both ends (none empty), and
    // every Slurm node the same new munge key.
    for (i, relay) in RELAYS.iter().enumerate() {
        assert_ne!(
            wg_show(&lab, relay, "public-key"),
            public_before[i],
            "{relay}"
        );
        let psks = wg_show(&lab, relay, "preshared-keys");
        assert_eq!(psks.lines().count(), 2, "{relay}: {psks}");
        assert!(!psks.contains("(none)"), "{relay}: {psks}");
        for line in psks.lines() {
            let key = line.split_whitespace().nth(1).unwrap();
            assert!(!preshared_before[i].contains(key), "{relay}: kept {key}");
        }
    }
    let munge_after = munge_key_sum(&lab, "bielefeld-master");
    assert_ne!(munge_after, munge_before);
    for node in SLURM_NODES {
        assert_eq!(munge_key_sum(&lab, node), munge_after, "{node}");
    }
    // The cluster is as planned: `up` has nothing to do, and a new job runs at every site.
    assert!(lab.up().contains("no changes"));
    for site in ["bielefeld", "giessen", "heidelberg"] {
        let out = lab.exec_ok(
            "bielefeld-master",
            &["srun", "-p", site, "-t", "1", "hostname"],
        );
        assert_eq!(out.trim(), format!("{site}-worker-1"));
    }
    no_secret_where_it_must_never_be(&lab, &job);
}

/// `rotate --when-due` right after `up`: nothing renewed, the report says how old the keys are.
fn keys_fresh_from_up_are_not_due(lab: &Lab) {
    let out = lab.hg_ok(&["rotate", "-f", lab.f(), "--when-due"]);
    assert!(
        out.starts_with("rotate: not due: the oldest key is ")
            && out.contains("old, tunnel.rotate_every is 10m"),
        "{out}"
    );
    let status = lab.hg_ok(&["status", "-f", lab.f(), "--no-ping"]);
    assert!(!status.contains("due (tunnel"), "{status}");
}

/// The job's output reached the results store after the rotation (its wrapper loaded the new
/// token) and `jobs` copied it here with the token too; a request without the token, or with
/// the one before the rotation made up by hand, is refused.
fn the_output_arrived_with_the_new_token(lab: &Lab, job: &str) {
    let output = lab
        .state()
        .join(&lab.name)
        .join(format!("results/{job}.out"));
    wait_until("`jobs` fetches the output", Duration::from_secs(30), || {
        lab.hg_ok(&["jobs", "-f", lab.f()]);
        output.exists()
    });
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "survived\n");
    let url = format!("http://{}:8080/results/{job}.out", master_ip(lab));
    let unsigned = lab.exec_ok(
        "giessen-worker-1",
        &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
    );
    assert_eq!(unsigned, "401", "a request without the token");
    let signed = lab.exec_ok(
        "giessen-worker-1",
        &[
            "sh",
            "-c",
            &format!(
                "{}\n{}",
                hybridgrid_core::jobs::load_job_env(),
                hybridgrid_core::jobs::results_curl(&format!("-sf {url}"))
            ),
        ],
    );
    assert_eq!(signed, "survived\n", "a worker's request with its token");
}

fn master_ip(lab: &Lab) -> String {
    let plan: serde_json::Value =
        serde_json::from_str(&lab.hg_ok(&["plan", "-f", lab.f(), "--json"])).unwrap();
    plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["role"] == "master")
        .and_then(|n| n["lan_ip"].as_str())
        .unwrap()
        .to_owned()
}

/// Every secret of the cluster (each relay's private key, every preshared key, the munge key,
/// the results store's token, giessen's store key), searched for in every place it must never be: the ledger and every
/// other file of the cluster's state that is not a key's own file, every log, every node's
/// configuration, every process's command line, `status --json`, `doctor --json`, `plan --json`,
/// `render`'s files and the batch script slurmctld keeps. The search first finds each secret
/// where it is kept, so that finding nothing elsewhere proves something.
fn no_secret_where_it_must_never_be(lab: &Lab, job: &str) {
    let cluster_dir = lab.state().join(&lab.name);
    let secrets = secrets_of(lab, &cluster_dir);
    let kept = secrets::search(
        &secrets,
        &secrets::files_under(&cluster_dir, &is_a_keys_home),
    );
    for (secret, _) in &secrets {
        assert!(
            kept.iter().any(|f| f.starts_with(secret.as_str())),
            "the search does not find {secret} where it is kept: {kept:?}"
        );
    }
    let mut places = secrets::files_under(&cluster_dir, &|p| !is_a_keys_home(p));
    for (name, args) in [
        (
            "status --json",
            vec!["status", "-f", lab.f(), "--json", "--no-ping"],
        ),
        ("doctor --json", vec!["doctor", "-f", lab.f(), "--json"]),
        ("plan --json", vec!["plan", "-f", lab.f(), "--json"]),
    ] {
        places.push((name.to_owned(), lab.hg(&args).stdout));
    }
    let render = lab.root.join("render");
    lab.hg_ok(&["render", "-f", lab.f(), "--out", render.to_str().unwrap()]);
    places.extend(secrets::files_under(&render, &|_| true));
    places.extend(secrets::command_lines());
    let batch = lab.exec_ok(
        "bielefeld-master",
        &["scontrol", "write", "batch_script", job, "-"],
    );
    places.push((
        "the batch script slurmctld keeps".into(),
        batch.into_bytes(),
    ));
    assert!(places.len() > 50, "too few places: {}", places.len());
    let leaks = secrets::search(&secrets, &places);
    assert!(
        leaks.is_empty(),
        "secrets where they must never be: {leaks:?}"
    );
}

/// A file that is where a secret lives: a key's own file (0600 or 0400), munge's folder, the
/// store's keys and its own configuration, the job environment (the token, the store keys).
fn is_a_keys_home(p: &std::path::Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    matches!(
        name,
        "private.key" | "next.key" | "preshared-keys.json" | "munge.key" | "store.env" | "job.env"
    ) || p
        .components()
        .any(|c| c.as_os_str() == "munge" || c.as_os_str() == "store")
}

/// (what, bytes) of every secret of the cluster, as this machine and the relays keep them.
fn secrets_of(lab: &Lab, cluster_dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut secrets = Vec::new();
    for relay in RELAYS {
        let path = cluster_dir.join("nodes").join(relay).join("wg/private.key");
        let key = std::fs::read_to_string(path).unwrap();
        secrets.push((
            format!("{relay}'s private key"),
            key.trim().as_bytes().to_vec(),
        ));
    }
    secrets.extend(secrets::preshared_keys(cluster_dir));
    secrets.extend(secrets::munge_key_and_token(cluster_dir));
    let store = super::slurm::Store::of(lab, "giessen");
    secrets.push(("giessen's store key".into(), store.secret.into_bytes()));
    assert_eq!(secrets.len(), 3 + 3 + 1 + 1 + 1);
    secrets
}
