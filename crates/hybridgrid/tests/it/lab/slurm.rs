//! Slurm across sites, the sites' object stores (S3: `data`, jobs reading at home), `submit` and
//! `jobs` on real 2-site local clusters.

use std::process::Command;
use std::time::Duration;

use hybridgrid_core::plan::Role;

use super::{Lab, wait_until};

/// Every PID in the cluster's namespaces (holders, daemons, Swift, munged, slurm*).
fn cluster_pids(lab: &Lab) -> Vec<u32> {
    lab.namespaces()
        .iter()
        .flat_map(|ns| {
            let out = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn down_and_gone(lab: &Lab) {
    let pids = cluster_pids(lab);
    let names: Vec<String> = pids.iter().map(|&p| comm(p)).collect();
    for daemon in ["slurmctld", "slurmd", "munged", "swift-proxy-ser"] {
        assert!(names.iter().any(|n| n == daemon), "no {daemon}: {names:?}");
    }
    lab.hg_ok(&["down", "-f", lab.f()]);
    lab.assert_gone();
    // Zombies wait for init to reap them; only live processes count.
    let live = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|st| Some(st.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
            .unwrap_or(false)
    };
    let mut left: Vec<String> = Vec::new();
    for _ in 0..50 {
        left = pids
            .iter()
            .filter(|&&p| live(p))
            .map(|&p| format!("{p} {}", comm(p)))
            .collect();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(left.is_empty(), "processes left after down: {left:?}");
}

fn sinfo_states(lab: &Lab) -> Vec<(String, String)> {
    lab.exec_ok("bielefeld-master", &["sinfo", "-h", "-N", "-o", "%N %t"])
        .lines()
        .filter_map(|l| {
            let (n, s) = l.split_once(' ')?;
            Some((n.to_owned(), s.trim().to_owned()))
        })
        .collect()
}

pub(super) fn wait_idle(lab: &Lab, nodes: &[&str]) {
    wait_until("workers idle in sinfo", Duration::from_secs(60), || {
        let states = sinfo_states(lab);
        nodes
            .iter()
            .all(|n| states.iter().any(|(name, s)| name == n && s == "idle"))
    });
}

/// The gateway's WireGuard bytes (rx + tx): everything that crossed between the sites.
fn cross_site_bytes(lab: &Lab) -> u64 {
    lab.tunnel_bytes("giessen-gw")
}

#[test]
fn slurm_across_sites_and_jobs_where_the_data_lives() {
    let Some(lab) = Lab::new("two-sites.yaml", "slm") else {
        return;
    };
    // A second dataset at the master site, outside the stores, for the cross-site refusal:
    // bielefeld holds no dataset in a bucket and runs no store.
    let text = std::fs::read_to_string(&lab.file).unwrap().replace(
        "slurm:\n",
        "  - name: scans\n    site: bielefeld\n    location: https://scans.example/\nslurm:\n",
    );
    std::fs::write(&lab.file, text).unwrap();
    lab.up();
    wait_idle(&lab, &["bielefeld-worker-1", "giessen-worker-1"]);

    // sinfo: a partition per site and `all`, every worker idle.
    let sinfo = lab.exec_ok("bielefeld-master", &["sinfo", "-h", "-o", "%P %t %N"]);
    for p in [
        "bielefeld idle bielefeld-worker-1",
        "giessen idle giessen-worker-1",
    ] {
        assert!(sinfo.contains(p), "{sinfo}");
    }
    assert!(sinfo.contains("all* idle"), "{sinfo}");
    // srun answers from a node of the site, for every site; each node keeps its own hostname.
    for site in ["bielefeld", "giessen"] {
        let out = lab.exec_ok("bielefeld-master", &["srun", "-p", site, "hostname"]);
        assert_eq!(out.trim(), format!("{site}-worker-1"));
    }
    // status shows Slurm next to the tunnels.
    // (A node may show `completing` for a moment after srun.)
    wait_until("status shows Slurm", Duration::from_secs(30), || {
        let status = lab.status(false);
        status.nodes.iter().all(|n| match n.role {
            Role::Worker => n.slurm.as_deref() == Some("idle"),
            Role::Master => n.slurm.as_deref() == Some("controller up"),
            Role::Gateway => n.slurm.is_none(),
        })
    });

    // The munge key: made once, 0400, the same on every Slurm node.
    use std::os::unix::fs::PermissionsExt as _;
    let cluster_dir = lab.state().join(&lab.name);
    let key = cluster_dir.join("munge.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o400
    );
    assert_eq!(std::fs::metadata(&key).unwrap().len(), 1024);

    // giessen's dataset is in giessen's store, put there from here; bielefeld runs none.
    let size: u64 = 64 << 20;
    assert!(
        lab.namespaces()
            .iter()
            .any(|n| n.ends_with("-giessen-store"))
    );
    assert!(
        !lab.namespaces()
            .iter()
            .any(|n| n.ends_with("-bielefeld-store"))
    );
    let chr1 = lab.root.join("chr1.fa");
    let data: Vec<u8> = b"ACGT"
        .iter()
        .copied()
        .cycle()
        .take(size as usize)
        .collect();
    std::fs::write(&chr1, &data).unwrap();
    let put = lab.hg_ok(&[
        "data",
        "put",
        "-f",
        lab.f(),
        "genomes",
        chr1.to_str().unwrap(),
    ]);
    assert!(put.contains("s3://genomes/chr1.fa at giessen"), "{put}");
    let ls = lab.hg_ok(&["data", "ls", "-f", lab.f(), "genomes"]);
    assert!(ls.contains(&format!("{size}  chr1.fa")), "{ls}");
    let keys = Store::of(&lab, "giessen");
    // Read from the other site (the keys in this process's environment only): it comes through
    // the tunnel.
    let before = cross_site_bytes(&lab);
    assert_eq!(
        keys.read_from(&lab, "bielefeld-worker-1", "s3://genomes/chr1.fa"),
        size
    );
    let naive = cross_site_bytes(&lab) - before;
    assert!(naive > size, "a cross-site read moved only {naive} bytes");

    let job = lab.root.join("job.sh");
    std::fs::write(
        &job,
        "#!/bin/sh\necho \"host=$(hostname) site=$HYBRIDGRID_SITE arg=$1\"\n\
         echo \"keys=${AWS_ACCESS_KEY_ID:-none}\"\n\
         if [ -n \"${AWS_ENDPOINT_URL:-}\" ]; then\n\
         \x20 echo \"bytes=$(aws --endpoint-url \"$AWS_ENDPOINT_URL\" s3 cp \"${HYBRIDGRID_DATASET_GENOMES}chr1.fa\" - | wc -c)\"\nfi\n",
    )
    .unwrap();
    let job = job.to_str().unwrap();
    let results = cluster_dir.join("results");

    // A job per site: completes, its output is on the master.
    for site in ["bielefeld", "giessen"] {
        let out = lab.hg_ok(&[
            "submit",
            "-f",
            lab.f(),
            "--partition",
            site,
            "--wait",
            "--parsable",
            "--",
            job,
            site,
        ]);
        let id = out.lines().next().unwrap().trim().to_owned();
        let text = std::fs::read_to_string(results.join(format!("{id}.out"))).unwrap();
        assert!(
            text.contains(&format!("host={site}-worker-1 site={site} arg={site}")),
            "{text}"
        );
    }

    // A job for the dataset runs at giessen and reads there: the tunnel does not carry the data.
    let before = cross_site_bytes(&lab);
    let out = lab.hg_ok(&["submit", "-f", lab.f(), "--dataset", "genomes", "--", job]);
    assert!(out.contains("partition giessen"), "{out}");
    let id: String = out.split_whitespace().nth(2).unwrap().trim().to_owned();
    // Finished with its output on the master, as `jobs` tells (it copies the output here).
    wait_until("the dataset job's output", Duration::from_secs(60), || {
        let doc: serde_json::Value =
            serde_json::from_str(&lab.hg_ok(&["jobs", "-f", lab.f(), "--json"])).unwrap();
        doc["jobs"].as_array().unwrap().iter().any(|j| {
            j["id"].as_u64().map(|v| v.to_string()).as_deref() == Some(id.as_str())
                && !j["output"].is_null()
        })
    });
    let moved = cross_site_bytes(&lab) - before;
    let text = std::fs::read_to_string(results.join(format!("{id}.out"))).unwrap();
    assert!(
        text.contains("host=giessen-worker-1 site=giessen"),
        "{text}"
    );
    assert!(text.contains(&format!("bytes={size}")), "{text}");
    assert!(
        moved < size / 100,
        "the located job moved {moved} bytes across sites (the data is {size})"
    );
    keys.nowhere_but_giessen(&lab, &id);

    // Datasets at two sites: refused unless allowed.
    let refused = lab.hg(&[
        "submit",
        "-f",
        lab.f(),
        "--dataset",
        "genomes",
        "--dataset",
        "scans",
        "--",
        job,
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("different sites"), "{err}");
    lab.hg_ok(&[
        "submit",
        "-f",
        lab.f(),
        "--dataset",
        "genomes",
        "--dataset",
        "scans",
        "--allow-cross-site",
        "--wait",
        "--",
        job,
    ]);

    // `jobs` lists every job with the site it ran at and its state.
    let jobs: serde_json::Value =
        serde_json::from_str(&lab.hg_ok(&["jobs", "-f", lab.f(), "--json"])).unwrap();
    assert_eq!(jobs["format_version"], 1, "{jobs:#}");
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    assert!(jobs.iter().all(|j| j["state"] == "COMPLETED"), "{jobs:?}");
    let sites: Vec<&str> = jobs.iter().map(|j| j["ran_at"].as_str().unwrap()).collect();
    // The cross-site job: one dataset at each site, the tie goes to the site listed first.
    assert_eq!(sites, ["bielefeld", "giessen", "giessen", "bielefeld"]);
    // And what crossed sites while each ran (issue 13): the partition jobs and the located job
    // moved almost nothing, the cross-site job (at bielefeld) read giessen's data through the
    // tunnel. `--wait` recorded the end exactly; the located job's end was taken by this `jobs`.
    let wan = |j: &serde_json::Value| {
        j["cross_site_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("{j}"))
    };
    for j in &jobs[..2] {
        assert!(wan(j) < size / 20, "{j}");
        assert_eq!(j["cross_site_bytes_upper_bound"], false, "{j}");
    }
    assert_eq!(jobs[2]["cross_site_bytes_upper_bound"], true, "{}", jobs[2]);
    // The located job read its bytes from giessen's store, none from another.
    let store = &jobs[2]["store_bytes"];
    assert!(store["giessen"].as_u64().unwrap() >= size, "{}", jobs[2]);
    assert_eq!(
        store.as_object().unwrap().len(),
        1,
        "one store only: {}",
        jobs[2]
    );
    // The cross-site job ran at bielefeld, where giessen's keys never are: it read nothing.
    assert!(wan(&jobs[3]) < size / 20, "the cross-site job: {}", jobs[3]);
    let out3 = std::fs::read_to_string(results.join(format!("{}.out", jobs[3]["id"]))).unwrap();
    assert!(out3.contains("keys=none"), "{out3}");
    assert_eq!(
        jobs[3]["cross_site_bytes_upper_bound"], false,
        "{}",
        jobs[3]
    );
    let table = lab.hg_ok(&["jobs", "-f", lab.f()]);
    assert!(table.contains("COMPLETED"), "{table}");
    assert!(
        table.contains("cross-site") && table.contains("giessen 64."),
        "{table}"
    );

    // A second `up` changes nothing: Slurm and the stores are as planned.
    assert!(lab.up().contains("no changes"));
    down_and_gone(&lab);
}

/// A site's store keys, as the operator's state holds them.
pub(super) struct Store {
    site: String,
    pub(super) secret: String,
    endpoint: String,
}

impl Store {
    pub(super) fn of(lab: &Lab, site: &str) -> Store {
        let keys = lab
            .state()
            .join(&lab.name)
            .join(format!("sites/{site}/store/keys"));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&keys).unwrap();
        let secret = text.lines().next().unwrap().to_owned();
        let plan: serde_json::Value =
            serde_json::from_str(&lab.hg_ok(&["plan", "-f", lab.f(), "--json"])).unwrap();
        let sites = plan["sites"].as_array().unwrap();
        let at = sites.iter().find(|s| s["name"] == site).unwrap();
        let ip = at["data_store_ip"].as_str().unwrap();
        Store {
            site: site.to_owned(),
            secret,
            endpoint: format!("http://{ip}:8080"),
        }
    }

    /// `aws s3 cp URL -` in `node`'s network namespace with these keys in its environment (not
    /// on its command line); the bytes read.
    fn read_from(&self, lab: &Lab, node: &str, url: &str) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("hg-{}-{node}", lab.name),
                "sh",
                "-c",
            ])
            .arg(format!(
                "aws --endpoint-url {} s3 cp {url} - | wc -c",
                self.endpoint
            ))
            .env("AWS_ACCESS_KEY_ID", "hybridgrid:data")
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_DEFAULT_REGION", &self.site)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// The files under `dir` that hold the secret, searched with the secret on standard input
    /// (as on the bed: on no command line).
    fn files_holding_it(&self, dir: &std::path::Path) -> String {
        let mut child = Command::new("grep")
            .args(["-rlFf", "/dev/stdin"])
            .arg(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{}\n", self.secret).as_bytes())
            .unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The secret is on giessen's Slurm nodes (root's, 0600) and nowhere at bielefeld: not in
    /// its nodes' state, not where jobs load keys, not in the batch script slurmctld keeps.
    fn nowhere_but_giessen(&self, lab: &Lab, job: &str) {
        let mode = lab.exec_ok("giessen-worker-1", &["stat", "-c", "%a %U", JOB_ENV]);
        assert_eq!(mode.trim(), "600 root");
        let on_worker = lab.exec_ok("giessen-worker-1", &["cat", JOB_ENV]);
        assert!(on_worker.contains(&self.secret));
        // The search finds it where it is: giessen-worker-1's state holds it.
        let worker_dir = lab.state().join(&lab.name).join("nodes/giessen-worker-1");
        assert!(!self.files_holding_it(&worker_dir).is_empty());
        for node in ["bielefeld-master", "bielefeld-worker-1"] {
            // Every Slurm node has a job environment (the results store's token), bielefeld's
            // without giessen's store keys.
            let found = lab.exec_ok(node, &["cat", JOB_ENV]);
            assert!(
                found.contains("HYBRIDGRID_RESULTS_TOKEN=") && !found.contains(&self.secret),
                "{node}: its job environment holds giessen's store key"
            );
            let dir = lab.state().join(&lab.name).join("nodes").join(node);
            let grep = self.files_holding_it(&dir);
            assert!(grep.is_empty(), "{node}: {grep}");
        }
        let batch = lab.exec_ok(
            "bielefeld-master",
            &["scontrol", "write", "batch_script", job, "-"],
        );
        assert!(
            batch.contains(JOB_ENV) && !batch.contains(&self.secret),
            "{batch}"
        );
    }
}

const JOB_ENV: &str = hybridgrid_core::jobs::JOB_ENV_FILE;

fn pid_on(lab: &Lab, node: &str, file: &str) -> String {
    lab.exec_ok(node, &["cat", file]).trim().to_owned()
}

#[test]
fn scale_up_joins_slurm_without_restarting_the_controller() {
    let Some(lab) = Lab::new("two-sites.yaml", "slscale") else {
        return;
    };
    lab.up();
    wait_idle(&lab, &["bielefeld-worker-1", "giessen-worker-1"]);
    let ctld = pid_on(&lab, "bielefeld-master", "/run/slurm/slurmctld.pid");
    let slurmd_b = pid_on(&lab, "bielefeld-worker-1", "/run/slurm/slurmd.pid");
    let slurmd_g = pid_on(&lab, "giessen-worker-1", "/run/slurm/slurmd.pid");
    let job = lab.exec_ok(
        "bielefeld-master",
        &[
            "sbatch",
            "--parsable",
            "-p",
            "giessen",
            "--wrap",
            "sleep 300",
        ],
    );
    let job = job.trim().to_owned();
    let state = |lab: &Lab| {
        lab.exec_ok(
            "bielefeld-master",
            &["squeue", "-h", "-j", &job, "-o", "%T"],
        )
        .trim()
        .to_owned()
    };
    wait_until("the job runs", Duration::from_secs(30), || {
        state(&lab) == "RUNNING"
    });
    let b_namespaces: Vec<String> = lab
        .namespaces()
        .into_iter()
        .filter(|n| n.contains("bielefeld"))
        .collect();

    // One more worker at giessen.
    let text = std::fs::read_to_string(&lab.file).unwrap();
    let at = text.find("name: giessen").unwrap();
    let count = at + text[at..].find("count: 1").unwrap();
    let grown = format!("{}count: 2{}", &text[..count], &text[count + 8..]);
    std::fs::write(&lab.file, grown).unwrap();
    let out = lab.up();
    assert!(!out.contains("no changes"), "{out}");
    wait_idle(&lab, &["giessen-worker-2"]);

    // In its site's partition and `all`, and it runs jobs.
    let sinfo = lab.exec_ok(
        "bielefeld-master",
        &["sinfo", "-h", "-p", "giessen", "-N", "-o", "%N"],
    );
    assert!(sinfo.contains("giessen-worker-2"), "{sinfo}");
    let all = lab.exec_ok(
        "bielefeld-master",
        &["sinfo", "-h", "-p", "all", "-N", "-o", "%N"],
    );
    assert!(all.contains("giessen-worker-2"), "{all}");
    let host = lab.exec_ok(
        "bielefeld-master",
        &[
            "srun",
            "-p",
            "giessen",
            "-w",
            "giessen-worker-2",
            "hostname",
        ],
    );
    assert_eq!(host.trim(), "giessen-worker-2");
    let feat = lab.exec_ok(
        "bielefeld-master",
        &["sinfo", "-h", "-n", "giessen-worker-2", "-o", "%f"],
    );
    assert_eq!(feat.trim(), "giessen");

    // Nothing else moved: the controller, the running job, the other slurmds, the other site.
    assert_eq!(
        pid_on(&lab, "bielefeld-master", "/run/slurm/slurmctld.pid"),
        ctld
    );
    assert_eq!(state(&lab), "RUNNING");
    assert_eq!(
        pid_on(&lab, "bielefeld-worker-1", "/run/slurm/slurmd.pid"),
        slurmd_b
    );
    assert_eq!(
        pid_on(&lab, "giessen-worker-1", "/run/slurm/slurmd.pid"),
        slurmd_g
    );
    let b_after: Vec<String> = lab
        .namespaces()
        .into_iter()
        .filter(|n| n.contains("bielefeld"))
        .collect();
    assert_eq!(b_namespaces, b_after);
    assert!(lab.up().contains("no changes"));
    down_and_gone(&lab);
}
