//! Running the `turn-bpf` binary as a child process in a network namespace, the way an operator
//! runs it: for the integration tests, the demo and the benchmark.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The line the agent logs once everything is attached.
pub const READY_MARK: &str = "offloading TURN port";

/// A running agent. Dropping it kills it (SIGTERM, then SIGKILL) if still running.
pub struct AgentProc {
    child: Option<Child>,
    log: PathBuf,
}

/// How an agent ended.
#[derive(Debug)]
pub struct AgentExit {
    pub status: ExitStatus,
    pub output: String,
    /// The counters it printed on exit, by name.
    pub counters: BTreeMap<String, u64>,
}

impl AgentExit {
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

impl AgentProc {
    /// Start `bin args...` inside `ns` (`ip netns exec`), stdout and stderr into `log`.
    /// The agent gets SIGTERM (and so detaches cleanly) if the thread that started it dies.
    pub fn start(bin: &Path, ns: &str, args: &[&str], log: &Path) -> Result<AgentProc> {
        AgentProc::start_with(bin, ns, args, log, &[])
    }

    /// [`AgentProc::start`] with environment variables `env` set for the agent.
    pub fn start_with(
        bin: &Path,
        ns: &str,
        args: &[&str],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Result<AgentProc> {
        use std::os::unix::process::CommandExt;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("ip");
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGTERM, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd
            .args(["netns", "exec", ns])
            .arg(bin)
            .args(args)
            // the per-binding lines (debug) too: tests read them
            .env("RUST_LOG", "info,turn_bpf::sweep=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} in {ns}", bin.display()))?;
        Ok(AgentProc {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Start and wait until it reports that everything is attached.
    pub fn start_ready(bin: &Path, ns: &str, args: &[&str], log: &Path) -> Result<AgentProc> {
        AgentProc::start_ready_with(bin, ns, args, log, &[])
    }

    /// [`AgentProc::start_ready`] with environment variables `env` set for the agent.
    pub fn start_ready_with(
        bin: &Path,
        ns: &str,
        args: &[&str],
        log: &Path,
        env: &[(&str, &str)],
    ) -> Result<AgentProc> {
        let mut a = AgentProc::start_with(bin, ns, args, log, env)?;
        a.wait_ready(Duration::from_secs(20))?;
        Ok(a)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(READY_MARK) {
                return Ok(());
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the agent exited ({st}) before it was ready:\n{}",
                    self.output()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready after {timeout:?}:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send `sig` and wait (bounded) for the exit.
    pub fn stop(mut self, sig: Signal) -> Result<AgentExit> {
        let pid = self.pid();
        kill(Pid::from_raw(pid as i32), sig).context("signalling the agent")?;
        self.finish(Duration::from_secs(15))
    }

    /// Wait for an agent that is expected to exit by itself (e.g. refused to start).
    pub fn wait_exit(mut self, timeout: Duration) -> Result<AgentExit> {
        self.finish(timeout)
    }

    /// Stop with SIGINT (the agent detaches and prints its counters) and return the counters;
    /// an error if it did not exit 0 or printed none.
    pub fn stop_counters(self) -> Result<BTreeMap<String, u64>> {
        let exit = self.stop(Signal::SIGINT)?;
        if exit.status.code() != Some(0) || !exit.output.contains("turn-bpf counters:") {
            bail!(
                "the agent ended with {} and output:\n{}",
                exit.status,
                exit.output
            );
        }
        Ok(exit.counters)
    }

    fn finish(&mut self, timeout: Duration) -> Result<AgentExit> {
        let mut child = self.child.take().context("already stopped")?;
        let status = wait_bounded(&mut child, timeout)?;
        let output = self.output();
        let counters = parse_counters(&output);
        Ok(AgentExit {
            status,
            output,
            counters,
        })
    }
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the agent did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            if wait_bounded(&mut c, Duration::from_secs(5)).is_err() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The counters block the agent prints on exit (`  NAME   value  meaning`).
pub fn parse_counters(output: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Some(start) = output.find("turn-bpf counters:") else {
        return out;
    };
    for line in output[start..].lines().skip(1) {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        if name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            if let Ok(v) = value.parse() {
                out.insert(name.to_string(), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exit_counters() {
        let out = "[..] INFO stopping\nturn-bpf counters:\n  RELAYED_TO_PEER        1000  ChannelData relayed\n  PASS_STUN   7  STUN\n";
        let c = parse_counters(out);
        assert_eq!(c.get("RELAYED_TO_PEER"), Some(&1000));
        assert_eq!(c.get("PASS_STUN"), Some(&7));
        assert_eq!(c.len(), 2);
        assert!(parse_counters("no counters here").is_empty());
    }
}
