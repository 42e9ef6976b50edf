//! The faults of one trial: which, when (drawn from the seed, so a run can be repeated), and
//! how each is done to the stack `scripts/stack.sh` runs. The stack's supervisor restarts a
//! part that exits; it writes `$STACK_DIR/pids/<part>.pid` for each start and leaves a part
//! down while `$STACK_DIR/hold/<part>` exists.

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// One kind of fault. Every trial injects each kind once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    KillRelay,
    KillProjector,
    KillCommandApi,
    /// A second projector joins the consumer group; a few seconds later the first is killed.
    SecondProjector,
    /// The broker is killed and kept down, then started again.
    BrokerOutage,
    /// The chaos cluster restarted in immediate mode (a crash, as far as clients can tell).
    PostgresRestart,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::KillRelay,
        Kind::KillProjector,
        Kind::KillCommandApi,
        Kind::SecondProjector,
        Kind::BrokerOutage,
        Kind::PostgresRestart,
    ];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::KillRelay => "kill -9 relay",
            Kind::KillProjector => "kill -9 projector",
            Kind::KillCommandApi => "kill -9 command-api",
            Kind::SecondProjector => "second projector joins, first killed",
            Kind::BrokerOutage => "broker down",
            Kind::PostgresRestart => "postgres restart -m immediate",
        })
    }
}

/// A fault at `at` after the trial starts; `hold` is how long it lasts where that applies
/// (the broker's outage, the second projector's head start before the first is killed).
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub kind: Kind,
    pub at: Duration,
    pub hold: Duration,
}

/// SplitMix64: a few lines, good enough to spread fault times, and the same sequence for the
/// same seed on every machine (no dependency whose algorithm could change under us).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [low, high] (seconds, as a duration).
    fn between(&mut self, low: f64, high: f64) -> Duration {
        Duration::from_secs_f64(low + (high - low).max(0.0) * self.unit())
    }
}

/// Plans trial `trial` of a run seeded with `seed`: every kind once, at a time drawn from the
/// seed, so faults land on every phase of the load (and sometimes on each other).
pub fn plan(seed: u64, trial: u32, load: Duration, broker_down: Duration) -> Vec<Fault> {
    let mut rng = Rng::new(seed ^ u64::from(trial).wrapping_mul(0xA24B_AED4_963E_E407));
    let secs = load.as_secs_f64();
    // Leave the first seconds for the load to get going, and the broker's outage room to end
    // close to the load's end, so the projector and the relay catch up on a real backlog.
    let last = (secs - 3.0).max(2.0);
    let mut faults: Vec<Fault> = Kind::ALL
        .iter()
        .map(|&kind| {
            let (at, hold) = match kind {
                Kind::BrokerOutage => (
                    rng.between(2.0, (secs - broker_down.as_secs_f64()).max(2.0)),
                    broker_down,
                ),
                Kind::SecondProjector => (rng.between(2.0, last - 8.0), rng.between(4.0, 8.0)),
                _ => (rng.between(2.0, last), Duration::ZERO),
            };
            Fault { kind, at, hold }
        })
        .collect();
    faults.sort_by_key(|fault| fault.at);
    faults
}

/// What the faults act on.
pub struct Stack {
    pub dir: PathBuf,
    pub projector_bin: PathBuf,
    /// A shell command that restarts the chaos cluster in immediate mode.
    pub postgres_restart: String,
}

/// The process a part of the stack runs as, found through its pid file. The supervisor may be
/// between two starts of the part (pid file missing or stale): wait for the next start.
async fn live_pid(stack: &Stack, part: &str) -> anyhow::Result<u32> {
    let file = stack.dir.join("pids").join(format!("{part}.pid"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(pid) = text.trim().parse::<u32>()
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!("no live process in {} for 30s", file.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .await
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

async fn kill_part(stack: &Stack, part: &str) -> anyhow::Result<String> {
    let pid = live_pid(stack, part).await?;
    signal(pid, "KILL").await?;
    Ok(format!("pid {pid}"))
}

/// Runs `fault` at its time after `start`. A second projector it starts is handed back, to be
/// stopped when the trial's load is over.
pub async fn inject(
    stack: &Stack,
    fault: Fault,
    start: Instant,
) -> anyhow::Result<(String, Option<Child>)> {
    tokio::time::sleep_until((start + fault.at).into()).await;
    let mut second = None;
    let detail = match fault.kind {
        Kind::KillRelay => kill_part(stack, "relay").await?,
        Kind::KillProjector => kill_part(stack, "projector").await?,
        Kind::KillCommandApi => kill_part(stack, "command-api").await?,
        Kind::SecondProjector => {
            let log = std::fs::File::create(stack.dir.join("logs").join("projector-2.log"))
                .context("creating the second projector's log")?;
            let child = Command::new(&stack.projector_bin)
                .arg("run")
                // Its own /metrics port (any free one): the first projector holds the stack's.
                .args(["--http-listen", "127.0.0.1:0"])
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting a second projector")?;
            let joined = child.id().map_or("?".to_owned(), |pid| pid.to_string());
            second = Some(child);
            tokio::time::sleep(fault.hold).await;
            // The stack's projector as it is now: another fault may have killed the one that
            // ran when the second joined, and the supervisor started it again.
            let first = live_pid(stack, "projector").await?;
            signal(first, "KILL").await?;
            format!(
                "pid {joined} joined, pid {first} killed {:.1}s later",
                fault.hold.as_secs_f64()
            )
        }
        Kind::BrokerOutage => {
            let hold = stack.dir.join("hold").join("nisshi");
            std::fs::create_dir_all(stack.dir.join("hold"))?;
            std::fs::write(&hold, "chaos: broker outage\n").context("writing the hold file")?;
            let killed = kill_part(stack, "nisshi").await;
            tokio::time::sleep(fault.hold).await;
            std::fs::remove_file(&hold).context("removing the hold file")?;
            format!("{}, down {:.0}s", killed?, fault.hold.as_secs_f64())
        }
        Kind::PostgresRestart => {
            let output = Command::new("sh")
                .args(["-c", &stack.postgres_restart])
                .output()
                .await
                .context("restarting Postgres")?;
            if !output.status.success() {
                bail!(
                    "`{}` failed: {}",
                    stack.postgres_restart,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            "restarted".to_owned()
        }
    };
    Ok((detail, second))
}

/// The supervisor's log, where it says which part exited with which status.
pub struct SupervisorLog {
    path: PathBuf,
    read: usize,
}

impl SupervisorLog {
    /// Starts at the log's current end: only exits from now on are reported.
    pub fn from_end(stack: &Stack) -> Self {
        let path = stack.dir.join("stack.log");
        let read = std::fs::read(&path).map_or(0, |bytes| bytes.len());
        SupervisorLog { path, read }
    }

    /// Exits logged since the last call, as "part (status)" with a count, split into those
    /// the faults caused (SIGKILL: status 137) and those the parts chose (anything else).
    pub fn exits(&mut self) -> (BTreeMap<String, u32>, BTreeMap<String, u32>) {
        let (mut killed, mut own) = (BTreeMap::new(), BTreeMap::new());
        let Ok(bytes) = std::fs::read(&self.path) else {
            return (killed, own);
        };
        // A rotated log starts again from the top.
        let new = bytes.get(self.read..).unwrap_or(&bytes[..]);
        for line in String::from_utf8_lossy(new).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if let [_, part, "exited", "with", "status", status, ..] = words[..] {
                let status = status.trim_end_matches(';');
                let which = if status == "137" {
                    &mut killed
                } else {
                    &mut own
                };
                *which.entry(format!("{part} ({status})")).or_default() += 1;
            }
        }
        self.read = bytes.len();
        (killed, own)
    }
}

/// Stops a second projector at the end of a trial: politely, so its last batch commits.
pub async fn stop_second(mut child: Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        signal(pid, "TERM").await?;
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(status) => {
            status?;
        }
        Err(_) => child.kill().await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_plan_every_time() {
        let a = plan(7, 1, Duration::from_secs(45), Duration::from_secs(20));
        let b = plan(7, 1, Duration::from_secs(45), Duration::from_secs(20));
        let times = |p: &[Fault]| p.iter().map(|f| (f.kind, f.at)).collect::<Vec<_>>();
        assert_eq!(times(&a), times(&b));
        assert_ne!(
            times(&a),
            times(&plan(
                7,
                2,
                Duration::from_secs(45),
                Duration::from_secs(20)
            ))
        );
    }

    #[test]
    fn every_kind_is_planned_once_and_ends_within_the_load() {
        for seed in 0..200 {
            let load = Duration::from_secs(45);
            let faults = plan(seed, 0, load, Duration::from_secs(20));
            let mut kinds: Vec<Kind> = faults.iter().map(|f| f.kind).collect();
            kinds.sort();
            assert_eq!(kinds, Kind::ALL);
            for fault in faults {
                assert!(fault.at >= Duration::from_secs(2), "{fault:?}");
                assert!(fault.at + fault.hold <= load, "{fault:?}");
            }
        }
    }
}
