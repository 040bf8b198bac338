//! Progress of `up` and `down` on standard error. On a terminal: one live line per site with its
//! current step, how many steps are done and the elapsed time, redrawn in place; notes and
//! failures print above that block (with `-v`, every finished change too). Elsewhere (a pipe, a
//! log file, CI): one plain line per event, through `tracing`. `-q` shows nothing but failures;
//! `-v` also every API call of the openstack provider with its duration.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use hybridgrid_engine::Event;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

struct SiteLine {
    site: String,
    step: String,
    done: usize,
    failed: usize,
}

struct State {
    t0: Instant,
    round: usize,
    sites: Vec<SiteLine>,
    /// Lines of the live block on screen now.
    drawn: usize,
}

pub struct Progress<W: Write + Send> {
    out: Mutex<(W, State)>,
    live: bool,
    verbosity: Verbosity,
}

/// The site a change's summary is about: `+ b: node b-gw` → `b`; `cluster` when none.
fn site_of(summary: &str) -> String {
    let rest = summary.trim_start_matches(['+', '-', '~', ' ']);
    match rest.split_once(": ") {
        Some((site, _)) if !site.contains(' ') => site.to_owned(),
        _ => "cluster".to_owned(),
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        s.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}

impl<W: Write + Send> Progress<W> {
    /// `live`: redraw per-site lines in place (standard error is a terminal).
    pub fn new(out: W, live: bool, verbosity: Verbosity) -> Self {
        let state = State {
            t0: Instant::now(),
            round: 0,
            sites: Vec::new(),
            drawn: 0,
        };
        Progress {
            out: Mutex::new((out, state)),
            live,
            verbosity,
        }
    }

    pub fn event(&self, e: Event) {
        let Ok(mut guard) = self.out.lock() else {
            return;
        };
        let (out, st) = &mut *guard;
        if !self.live {
            plain(&e);
            return;
        }
        // Above the block: what must stay readable after the block moves on.
        let above = match &e {
            Event::Failed { summary, error } => Some(format!("FAILED {summary}: {error}")),
            Event::Note(n) if self.verbosity != Verbosity::Quiet => Some(n.clone()),
            // -v: the full history of changes stays on screen too
            Event::Applied { .. } if self.verbosity == Verbosity::Verbose => Some(line(&e)),
            _ => None,
        };
        match &e {
            Event::Round { round, .. } => st.round = *round,
            Event::Applied { summary, .. } | Event::Failed { summary, .. } => {
                let site = site_of(summary);
                let i = match st.sites.iter().position(|s| s.site == site) {
                    Some(i) => i,
                    None => {
                        st.sites.push(SiteLine {
                            site,
                            step: String::new(),
                            done: 0,
                            failed: 0,
                        });
                        st.sites.len() - 1
                    }
                };
                let line = &mut st.sites[i];
                line.step = summary.clone();
                if matches!(e, Event::Failed { .. }) {
                    line.failed += 1;
                } else {
                    line.done += 1;
                }
            }
            Event::Note(_) => {}
        }
        if self.verbosity == Verbosity::Quiet && above.is_none() {
            return;
        }
        // Clear the block, print what goes above it, draw the block again.
        let _ = write!(out, "{}", "\x1b[1A\x1b[2K".repeat(st.drawn));
        if let Some(a) = above {
            let _ = writeln!(out, "{a}");
        }
        if self.verbosity == Verbosity::Quiet {
            st.drawn = 0;
            return;
        }
        let elapsed = st.t0.elapsed().as_secs_f64();
        let _ = writeln!(out, "round {} · {elapsed:.1} s", st.round.max(1));
        let width = st.sites.iter().map(|s| s.site.len()).max().unwrap_or(0);
        for s in &st.sites {
            let failed = if s.failed > 0 {
                format!(", {} failed", s.failed)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {:width$}  {:>3} done{failed}  {}",
                s.site,
                s.done,
                clip(&s.step, 90)
            );
        }
        st.drawn = 1 + st.sites.len();
        let _ = out.flush();
    }
}

/// One plain line per event, through `tracing` (the subscriber's level is -q/-v): changes and
/// notes at info, failures at warn.
fn plain(e: &Event) {
    match e {
        Event::Failed { .. } => tracing::warn!("{}", line(e)),
        _ => tracing::info!("{}", line(e)),
    }
}

/// The plain line of an event (also shown above the live block with `-v`).
fn line(e: &Event) -> String {
    match e {
        Event::Round {
            round,
            changes,
            seconds,
        } => format!("round {round}: {changes} changes (at {seconds:.1}s)"),
        Event::Applied {
            summary,
            seconds,
            details,
        } => {
            let extra = if details.is_empty() {
                String::new()
            } else {
                format!(" — {}", details.join("; "))
            };
            format!("  {seconds:5.2}s {summary}{extra}")
        }
        Event::Failed { summary, error } => format!("  FAILED {summary}: {error}"),
        Event::Note(n) => format!("  {n}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod tests {
    use super::*;

    fn applied(s: &str) -> Event {
        Event::Applied {
            summary: s.into(),
            seconds: 0.5,
            details: vec![],
        }
    }

    fn run(live: bool, verbosity: Verbosity, events: Vec<Event>) -> String {
        let p = Progress::new(Vec::new(), live, verbosity);
        for e in events {
            p.event(e);
        }
        String::from_utf8(p.out.into_inner().unwrap().0).unwrap()
    }

    fn events() -> Vec<Event> {
        vec![
            Event::Round {
                round: 1,
                changes: 4,
                seconds: 0.0,
            },
            applied("+ a: network, subnet and router"),
            applied("+ b: network, subnet and router"),
            applied("+ a: node a-master (master)"),
            Event::Note("b-gw has not reported its key yet".into()),
            Event::Failed {
                summary: "+ b: node b-gw (gateway)".into(),
                error: "quota".into(),
            },
        ]
    }

    #[test]
    fn a_terminal_gets_one_live_line_per_site() {
        let out = run(true, Verbosity::Normal, events());
        // The last frame (after the last clear): a header and one line per site.
        let last = &out[out.rfind("round 1 · ").unwrap()..];
        let lines: Vec<&str> = last.lines().collect();
        assert!(lines[0].starts_with("round 1 · "), "{last}");
        assert!(
            lines[1].contains("a    2 done  + a: node a-master (master)"),
            "{last}"
        );
        assert!(
            lines[2].contains("b    1 done, 1 failed  + b: node b-gw (gateway)"),
            "{last}"
        );
        assert_eq!(lines.len(), 3, "{last}");
        // Notes and failures stay above the block.
        assert!(out.contains("b-gw has not reported its key yet\n"));
        assert!(out.contains("FAILED + b: node b-gw (gateway): quota\n"));
    }

    /// What `tracing` prints at `level`, as `main` sets it up, for the events in plain mode.
    fn plain_at(level: tracing::level_filters::LevelFilter, events: Vec<Event>) -> String {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sink = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_max_level(level)
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let p = Progress::new(Vec::new(), false, Verbosity::Normal);
            for e in events {
                p.event(e);
            }
        });
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_pipe_gets_plain_lines_and_quiet_only_failures() {
        use tracing::level_filters::LevelFilter;
        let out = plain_at(LevelFilter::INFO, events());
        assert!(
            out.starts_with(
                "round 1: 4 changes (at 0.0s)\n   0.50s + a: network, subnet and router\n"
            ),
            "{out}"
        );
        assert!(!out.contains('\x1b'));
        let quiet = plain_at(LevelFilter::WARN, events());
        assert_eq!(quiet, "  FAILED + b: node b-gw (gateway): quota\n");
        let quiet_live = run(true, Verbosity::Quiet, events());
        assert_eq!(quiet_live, "FAILED + b: node b-gw (gateway): quota\n");
    }

    #[test]
    fn verbose_keeps_every_change_above_the_live_block() {
        let out = run(true, Verbosity::Verbose, events());
        assert!(
            out.contains("  0.50s + a: network, subnet and router\n"),
            "{out}"
        );
        assert!(
            out.contains("  0.50s + a: node a-master (master)\n"),
            "{out}"
        );
    }
}
