//! What the master tells about submitted jobs, parsed (pure): `sbatch --parsable`'s answer, and
//! one combined answer of `squeue`, `scontrol show job` and the results store's status files
//! (asked in one go by the script [`query_script`] makes), read by [`MasterAnswer`].

use std::collections::BTreeMap;

use serde::Deserialize;

/// Separates the parts of the master's answer to [`query_script`].
pub const SEP: &str = "--hybridgrid--";

/// The job environment on every Slurm node (`KEY='value'` lines, root's alone, 0600; private to
/// the node on every provider, the local provider binding `/var/lib/slurm` per node): the results
/// store's token ([`RESULTS_TOKEN_VAR`]) and, at a site with an object store, the site's store
/// keys. A batch script loads it ([`load_job_env`]) and never holds the values: slurmctld keeps
/// batch scripts on the master, at another site.
pub const JOB_ENV_FILE: &str = "/var/lib/slurm/hybridgrid/job.env";
/// The name the results store's token has in a job's environment.
pub const RESULTS_TOKEN_VAR: &str = "HYBRIDGRID_RESULTS_TOKEN";
/// Shell: exports what [`JOB_ENV_FILE`] holds, where it is readable.
pub fn load_job_env() -> String {
    format!("if [ -r {JOB_ENV_FILE} ]; then set -a; . {JOB_ENV_FILE}; set +a; fi")
}

/// Shell: `curl ARGS` to the results store, with the token from the environment as its
/// `Authorization` header. The header goes to curl as a configuration on standard input
/// (`printf` is the shell's own), so no command line shows the token; `ARGS` must not read
/// standard input.
pub fn results_curl(args: &str) -> String {
    format!(
        "printf 'header = \"Authorization: Bearer %s\"\\n' \"${RESULTS_TOKEN_VAR}\" | curl -K - {args}"
    )
}

/// The job's status file in the results store, written when its script has finished.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResultStatus {
    /// The node it ran on.
    pub node: String,
    /// The script's exit code.
    pub exit: i64,
}

/// The script that asks the master about `ids`: the queue, `scontrol show job` of each job, and
/// each job's status file from the results store at `results_url`, separated by [`SEP`].
pub fn query_script(ids: &[u64], results_url: &str) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!(
        "squeue -h -o '%i|%T|%N'; echo {SEP}\n\
         for id in {ids}; do scontrol show job -o $id 2>/dev/null | head -n 1; done; echo {SEP}\n\
         {load}\n\
         for id in {ids}; do printf '%s ' $id; {get} | tr -d '\\n'; echo; done",
        ids = ids.join(" "),
        load = load_job_env(),
        get = results_curl(&format!("-sf {results_url}$id.json")),
    )
}

/// The master's answer to [`query_script`], in its three parts.
#[derive(Debug, Clone, Default)]
pub struct MasterAnswer<'a> {
    /// `squeue -h -o '%i|%T|%N'`: the jobs Slurm still queues or runs.
    queue: &'a str,
    /// `scontrol show job -o`: one line per job Slurm still remembers.
    shown: &'a str,
    /// Job id → the status file's text (empty when there is none yet).
    statuses: BTreeMap<&'a str, &'a str>,
}

impl<'a> MasterAnswer<'a> {
    pub fn parse(answer: &'a str) -> MasterAnswer<'a> {
        let sep = format!("{SEP}\n");
        let mut parts = answer.split(sep.as_str());
        let queue = parts.next().unwrap_or_default();
        let shown = parts.next().unwrap_or_default();
        let statuses = parts
            .next()
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .collect();
        MasterAnswer {
            queue,
            shown,
            statuses,
        }
    }

    /// Slurm's state of the job and the node it runs or ran on: from the queue, else from
    /// `scontrol show job` (a job that has left the queue); `(None, None)` when Slurm has
    /// forgotten it.
    pub fn slurm(&self, id: u64) -> (Option<String>, Option<String>) {
        let id = id.to_string();
        if let Some(line) = self
            .queue
            .lines()
            .find(|l| l.split('|').next() == Some(id.as_str()))
        {
            let parts: Vec<&str> = line.split('|').collect();
            let state = parts.get(1).map(|s| (*s).to_owned());
            let node = parts
                .get(2)
                .filter(|s| !s.is_empty())
                .map(|s| (*s).to_owned());
            return (state, node);
        }
        let prefix = format!("JobId={id} ");
        let Some(show) = self.shown.lines().find(|l| l.starts_with(&prefix)) else {
            return (None, None);
        };
        let (mut state, mut node) = (None, None);
        for w in show.split_whitespace() {
            if let Some(s) = w.strip_prefix("JobState=") {
                state = Some(s.to_owned());
            }
            if let Some(n) = w.strip_prefix("NodeList=")
                && n != "(null)"
            {
                node = Some(n.to_owned());
            }
        }
        (state, node)
    }

    /// The job's status file, once its script has finished and uploaded it.
    pub fn result(&self, id: u64) -> Option<ResultStatus> {
        self.statuses
            .get(id.to_string().as_str())
            .and_then(|t| serde_json::from_str(t).ok())
    }
}

/// The job's state: Slurm's, else what its status file says (`COMPLETED` or `FAILED`), else
/// `UNKNOWN`.
pub fn state(slurm: Option<String>, result: Option<&ResultStatus>) -> String {
    match (slurm, result) {
        (Some(s), _) => s,
        (None, Some(r)) if r.exit == 0 => "COMPLETED".to_owned(),
        (None, Some(_)) => "FAILED".to_owned(),
        (None, None) => "UNKNOWN".to_owned(),
    }
}

/// Slurm is done with the job (UNKNOWN too: neither squeue nor scontrol knows it any more).
pub fn finished(state: &str) -> bool {
    !matches!(
        state,
        "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED"
    )
}

/// The job id in `sbatch --parsable`'s answer (`ID` or `ID;CLUSTER`).
pub fn sbatch_id(answer: &str) -> Option<u64> {
    answer.trim().split(';').next().and_then(|s| s.parse().ok())
}

/// A name Slurm takes as it is: letters, digits, `-`, `_` and `.`; anything else becomes `_`.
pub fn job_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "7|RUNNING|a-worker-1\n8|PENDING|\n--hybridgrid--\n\
        JobId=9 JobName=x JobState=COMPLETED NodeList=b-worker-1 ExitCode=0:0\n\
        JobId=10 JobName=y JobState=CANCELLED NodeList=(null)\n--hybridgrid--\n\
        7 \n8 \n9 {\"job\": 9, \"node\": \"b-worker-1\", \"exit\": 0}\n10 \n\
        11 {\"job\": 11, \"node\": \"a-worker-2\", \"exit\": 3}\n12 \n";

    #[test]
    fn the_queue_comes_first_then_scontrol_then_the_status_file() {
        let a = MasterAnswer::parse(ANSWER);
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(a.slurm(7), (s("RUNNING"), s("a-worker-1")));
        assert_eq!(a.slurm(8), (s("PENDING"), None));
        assert_eq!(a.slurm(9), (s("COMPLETED"), s("b-worker-1")));
        assert_eq!(a.slurm(10), (s("CANCELLED"), None));
        assert_eq!(a.slurm(11), (None, None));
        assert_eq!(a.result(7), None);
        let done = a.result(11).unwrap();
        assert_eq!((done.node.as_str(), done.exit), ("a-worker-2", 3));
        assert_eq!(state(None, Some(&done)), "FAILED");
        assert_eq!(state(a.slurm(12).0, a.result(12).as_ref()), "UNKNOWN");
        assert_eq!(state(s("RUNNING"), Some(&done)), "RUNNING");
        assert!(MasterAnswer::parse("").slurm(7) == (None, None));
    }

    #[test]
    fn finished_sbatch_ids_and_names() {
        assert!(finished("COMPLETED") && finished("UNKNOWN") && finished("FAILED"));
        assert!(!finished("RUNNING") && !finished("PENDING") && !finished("COMPLETING"));
        assert_eq!(sbatch_id("42\n"), Some(42));
        assert_eq!(sbatch_id("42;cluster"), Some(42));
        assert_eq!(sbatch_id("sbatch: error"), None);
        assert_eq!(job_name("my job (2).sh"), "my_job__2_.sh");
    }

    #[test]
    fn the_query_asks_for_every_job_in_one_script() {
        let script = query_script(&[7, 8], "http://10.0.0.2:8080/results/");
        assert!(
            script.contains("for id in 7 8; do scontrol show job"),
            "{script}"
        );
        assert!(
            script.contains("curl -K - -sf http://10.0.0.2:8080/results/$id.json"),
            "{script}"
        );
        assert!(script.contains(&load_job_env()), "{script}");
        assert_eq!(script.matches(SEP).count(), 2);
    }
}
