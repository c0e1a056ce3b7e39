//! The agent's counters read live from its `stats` map while it runs (it prints them only on
//! exit), so a test can tell which of its datagrams were relayed in XDP, one by one.
//!
//! The map is found through the file descriptors the agent process holds (`/proc/PID/fdinfo`
//! names each BPF map's ID), never by name alone: other agents may run on the same host, each
//! with a map called `stats`.

use std::fs;

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapHandle, MapType};
use turn_bpf::stats::Counters;

/// The per-CPU `stats` map of one running agent.
pub struct LiveCounters {
    map: MapHandle,
}

impl LiveCounters {
    /// The `stats` map of the agent with process ID `pid` (the pid of `AgentProc`: `ip netns
    /// exec` execs the agent in place).
    pub fn of_pid(pid: u32) -> Result<LiveCounters> {
        let dir = format!("/proc/{pid}/fdinfo");
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
            let Ok(text) = fs::read_to_string(entry?.path()) else {
                continue;
            };
            let Some(id) = text
                .lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(map) = MapHandle::from_map_id(id) else {
                continue;
            };
            if map.name() == "stats" && map.map_type() == MapType::PercpuArray {
                return Ok(LiveCounters { map });
            }
        }
        bail!("process {pid} holds no per-CPU BPF map named stats")
    }

    /// The `stats` map pinned under `dir` by an agent run with `--pin-path dir`: readable while
    /// an agent runs, and while none does.
    pub fn pinned(dir: &std::path::Path) -> Result<LiveCounters> {
        let path = dir.join("stats");
        let map = MapHandle::from_pinned_path(&path)
            .with_context(|| format!("opening the pinned {}", path.display()))?;
        Ok(LiveCounters { map })
    }

    /// All counters now, summed over CPUs.
    pub fn read(&self) -> Result<Counters> {
        Counters::read(&self.map)
    }
}
