//! Workers on demand (Slurm's power saving) on a real local cluster: woken at the site of the
//! jobs' data, removed when idle, a failed wake-up DOWN at once with the cloud's reason.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hybridgrid_core::plan::Plan;
use hybridgrid_engine::doctor::DoctorReport;
use serde_json::Value;

use super::{Lab, wait_until};

/// Two sites; giessen's workers exist only while Slurm wants them.
fn on_demand_cluster() -> String {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-sites.yaml"),
    )
    .unwrap();
    let (head, tail) = text.split_once("  - name: giessen").unwrap();
    let tail = tail.replacen(
        "      - count: 1\n",
        "      - name: od\n        count: 2\n        on_demand: true\n",
        1,
    );
    format!("{head}  - name: giessen{tail}").replace("slurm:\n", "slurm:\n  suspend_time: 20\n")
}

const WORKERS: [&str; 2] = ["giessen-od-1", "giessen-od-2"];

/// `sinfo -N`: node → state (`idle~`, `mix`, `down~`, …).
fn slurm_states(lab: &Lab) -> Vec<(String, String)> {
    lab.exec_ok(
        "bielefeld-master",
        &["sinfo", "-h", "-N", "-p", "giessen", "-o", "%N %t"],
    )
    .lines()
    .filter_map(|l| {
        let (n, s) = l.split_once(' ')?;
        Some((n.to_owned(), s.trim().to_owned()))
    })
    .collect()
}

/// The giessen workers that exist now (their namespaces).
fn existing(lab: &Lab) -> BTreeSet<String> {
    lab.namespaces()
        .iter()
        .filter_map(|ns| ns.strip_prefix(&lab.prefix()))
        .filter(|n| n.starts_with("giessen-od-"))
        .map(str::to_owned)
        .collect()
}

fn jobs(lab: &Lab) -> Vec<Value> {
    let doc: Value = serde_json::from_str(&lab.hg_ok(&["jobs", "-f", lab.f(), "--json"])).unwrap();
    doc["jobs"].as_array().unwrap().clone()
}

/// A job for giessen's dataset, sent to giessen's partition.
fn submit_for_genomes(lab: &Lab, job: &std::path::Path) {
    let out = lab.hg_ok(&[
        "submit",
        "-f",
        lab.f(),
        "--dataset",
        "genomes",
        "--",
        job.to_str().unwrap(),
    ]);
    assert!(out.contains("partition giessen"), "{out}");
}

/// Until both giessen workers are powered down (`idle~`).
fn wait_asleep(lab: &Lab, limit: Duration) {
    wait_until("both workers powered down", limit, || {
        slurm_states(lab).iter().all(|(_, s)| s == "idle~")
    });
}

fn no_changes(lab: &Lab) -> bool {
    lab.hg_ok(&["plan", "-f", lab.f()]).contains("no changes")
}

#[test]
fn on_demand_workers_wake_at_their_site_and_leave_when_idle() {
    let Some(lab) = Lab::with_text(&on_demand_cluster(), "od") else {
        return;
    };
    lab.up();

    // `up` made no giessen worker; Slurm knows both, powered down; that is no drift.
    assert_eq!(existing(&lab), BTreeSet::new());
    for w in WORKERS {
        assert!(
            slurm_states(&lab).contains(&(w.to_owned(), "idle~".to_owned())),
            "{:?}",
            slurm_states(&lab)
        );
    }
    assert!(no_changes(&lab));
    let plan: Plan = serde_json::from_str(&lab.hg_ok(&["plan", "-f", lab.f(), "--json"])).unwrap();
    let planned = plan.nodes.iter().filter(|n| n.on_demand).count();
    assert_eq!(planned, 2, "{plan:#?}");
    let status = lab.status(true);
    let asleep = status.nodes.iter().filter(|n| n.on_demand && !n.up).count();
    assert_eq!(asleep, 2, "{status:#?}");
    let failed: Vec<_> = status.reachability.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "asleep workers were probed: {failed:?}");
    let doctor: DoctorReport =
        serde_json::from_str(&lab.hg_ok(&["doctor", "-f", lab.f(), "--json"])).unwrap();
    assert!(doctor.healthy, "{doctor:#?}");

    // Three jobs for giessen's dataset wake its workers and run there.
    let job = lab.root.join("job.sh");
    std::fs::write(&job, "#!/bin/sh\nsleep 5\necho host=$(hostname)\n").unwrap();
    let submitted = Instant::now();
    for _ in 0..3 {
        submit_for_genomes(&lab, &job);
    }
    let mut seen = BTreeSet::new();
    let mut first_start: Option<Duration> = None;
    wait_until(
        "three jobs done at giessen",
        Duration::from_secs(150),
        || {
            seen.extend(existing(&lab));
            let jobs = jobs(&lab);
            if first_start.is_none() && jobs.iter().any(|j| j["state"] == "RUNNING") {
                first_start = Some(submitted.elapsed());
            }
            jobs.len() == 3 && jobs.iter().all(|j| j["state"] == "COMPLETED")
        },
    );
    eprintln!("submit → first job running: {first_start:?}");
    for j in jobs(&lab) {
        assert_eq!(j["ran_at"], "giessen", "{j}");
        assert!(
            j["node"].as_str().unwrap().starts_with("giessen-od-"),
            "{j}"
        );
    }
    assert!(
        !seen.is_empty(),
        "no giessen worker existed while the jobs ran"
    );
    // The jobs started when slurmctld's prolog saw their woken nodes registered, not at
    // Slurm 22.05's periodic check of configuring jobs (every 30 s).
    let log = lab.exec_ok("bielefeld-master", &["cat", "/var/log/slurm/slurmctld.log"]);
    let by_prolog = log
        .lines()
        .filter(|l| l.contains("prolog_running_decr: Configuration for JobId="))
        .count();
    assert!(
        by_prolog >= 1,
        "no job started when its prolog ended:\n{log}"
    );
    assert!(
        !log.contains("job_time_limit: Configuration for JobId="),
        "a job waited for slurmctld's periodic check:\n{log}"
    );

    // Idle for suspend_time: Slurm removes them, namespaces and processes; no drift.
    wait_until("idle workers removed", Duration::from_secs(90), || {
        existing(&lab).is_empty()
    });
    let left: Vec<String> = lab
        .processes()
        .into_iter()
        .filter(|p| p.contains("giessen-od-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(no_changes(&lab));

    // A wake-up the cloud refuses: the node is DOWN with the cloud's reason within seconds, and
    // the job runs once a node can be made.
    let refuse = lab.state().join(&lab.name).join("refuse");
    std::fs::create_dir_all(&refuse).unwrap();
    for w in WORKERS {
        std::fs::write(
            refuse.join(w),
            "quota exceeded for instances: 4 of 4 used\n",
        )
        .unwrap();
    }
    wait_asleep(&lab, Duration::from_secs(60));
    let asked = Instant::now();
    submit_for_genomes(&lab, &job);
    wait_until(
        "a DOWN worker with the cloud's reason",
        Duration::from_secs(20),
        || {
            lab.exec_ok("bielefeld-master", &["sinfo", "-h", "-R", "-o", "%N|%E"])
                .lines()
                .any(|l| l.starts_with("giessen-od-") && l.contains("quota exceeded for instances"))
        },
    );
    let down_after = asked.elapsed();
    assert!(
        down_after < Duration::from_secs(10),
        "DOWN only after {down_after:?}"
    );
    assert_eq!(
        existing(&lab),
        BTreeSet::new(),
        "a refused node was left half-made"
    );
    std::fs::remove_dir_all(&refuse).unwrap();
    // Slurm holds a requeued job back for two minutes; the failed node returns after its
    // hold-back (30 s) once powered down.
    wait_until("the refused job ran", Duration::from_secs(240), || {
        jobs(&lab)
            .iter()
            .filter(|j| j["state"] == "COMPLETED")
            .count()
            == 4
    });

    // `down` while Slurm is waking a worker: nothing is left, and nothing is made after it.
    wait_asleep(&lab, Duration::from_secs(90));
    submit_for_genomes(&lab, &job);
    wait_until("a wake-up under way", Duration::from_secs(30), || {
        slurm_states(&lab).iter().any(|(_, s)| s.ends_with('#'))
    });
    lab.hg_ok(&["down", "-f", lab.f()]);
    lab.assert_gone();
    std::thread::sleep(Duration::from_secs(2));
    lab.assert_gone();
}
