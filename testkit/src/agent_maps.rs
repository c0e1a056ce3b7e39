//! The BPF maps a running agent holds, as the kernel sees them: name, type, key and value
//! sizes, `max_entries` and the kernel's memlock figure, found through the agent's file
//! descriptors (`/proc/PID/fdinfo` names each map's ID), never by name alone: other agents may
//! run on the same host with maps of the same names.

use std::fs;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapHandle, MapType};

/// One map of a running agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentMap {
    pub id: u32,
    pub name: String,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// `memlock` of the map's fdinfo: what the kernel accounts for it.
    pub memlock: Option<u64>,
}

/// Every BPF map the process `pid` holds, by map ID, each once.
pub fn of_pid(pid: u32) -> Result<Vec<AgentMap>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids: Vec<u32> = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let mut out = Vec::new();
    for id in ids {
        let Ok(map) = MapHandle::from_map_id(id) else {
            continue;
        };
        out.push(AgentMap {
            id,
            name: map.name().to_string_lossy().into_owned(),
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: map.max_entries(),
            memlock: map.query_fdinfo().ok().and_then(|i| i.memlock),
        });
    }
    Ok(out)
}
