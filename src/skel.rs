//! The generated libbpf-rs skeleton of `bpf/turn.bpf.c` (built by `build.rs`), and the programs'
//! load-time settings, applied the same way by the agent and by the packet tests.

#[allow(
    clippy::all,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/turn.skel.rs"));
}

pub use generated::*;

/// What the programs are loaded with: their `volatile const` configuration (`bpf/lib/maps.h`).
/// Which sockets speak for the server is not configuration: it is the `server_socks` map, kept
/// by the server watch (`server.rs`). `cfg_trust_test_run` is the test harness's alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// TURN listening ports (at most `TB_MAX_TURN_PORTS`).
    pub turn_ports: Vec<u16>,
    /// Pass every Nth datagram of a channel to the server (0: never).
    pub spill_every: u32,
    pub channel_lifetime_s: u64,
    pub permission_lifetime_s: u64,
    /// How long a recorded request can be answered, and how far a blind spot reaches
    /// (`TB_PENDING_LIFETIME_MS` in the agent; the packet tests shorten it).
    pub pending_lifetime_ms: u64,
    /// The server's rules that change what is relayed (its profile's).
    pub rules: Rules,
    /// Count packets, data bytes and the last packet's time per channel binding, each way
    /// (`--binding-counters`).
    pub binding_counters: bool,
}

/// The server rules the programs apply (`src/server_conf/profile.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// A ChannelBind sets the peer's permission to the channel lifetime (else to the
    /// permission lifetime).
    pub bind_permission_is_channel_lifetime: bool,
    /// A channel relays only while the permission it was bound under lives.
    pub channel_needs_permission: bool,
    /// The largest datagram the server relays whole, client to peer and peer to client.
    pub max_to_peer: u32,
    pub max_to_client: u32,
    /// What a Refresh asking for less (not 0) is granted at least.
    pub refresh_floor_s: u32,
    /// What a Refresh without LIFETIME, or asking for `refresh_max_s` or more, is granted.
    pub refresh_default_s: u32,
    pub refresh_max_s: u32,
}

impl Rules {
    pub fn of(p: &crate::server_conf::profile::Profile) -> Rules {
        Rules {
            bind_permission_is_channel_lifetime: p.bind_permission_is_channel_lifetime,
            channel_needs_permission: p.channel_needs_permission,
            max_to_peer: p.max_to_peer,
            max_to_client: p.max_to_client,
            refresh_floor_s: p.refresh_floor_s,
            refresh_default_s: p.refresh_default_s,
            refresh_max_s: p.refresh_max_s,
        }
    }
}

impl Settings {
    /// Write the settings into the opened object's `.rodata`, before `load()`.
    pub fn apply(&self, ro: &mut types::rodata) {
        for (slot, port) in ro.cfg_turn_ports.iter_mut().zip(&self.turn_ports) {
            *slot = port.to_be();
        }
        ro.cfg_spill_every = self.spill_every;
        ro.cfg_channel_lifetime_ns = self.channel_lifetime_s * 1_000_000_000;
        ro.cfg_permission_lifetime_ns = self.permission_lifetime_s * 1_000_000_000;
        ro.cfg_pending_lifetime_ns = self.pending_lifetime_ms * 1_000_000;
        ro.cfg_bind_permission_ns = if self.rules.bind_permission_is_channel_lifetime {
            ro.cfg_channel_lifetime_ns
        } else {
            ro.cfg_permission_lifetime_ns
        };
        ro.cfg_channel_needs_permission = u32::from(self.rules.channel_needs_permission);
        ro.cfg_max_to_peer = self.rules.max_to_peer;
        ro.cfg_max_to_client = self.rules.max_to_client;
        ro.cfg_refresh_floor_s = self.rules.refresh_floor_s;
        ro.cfg_refresh_default_s = self.rules.refresh_default_s;
        ro.cfg_refresh_max_s = self.rules.refresh_max_s;
        ro.cfg_binding_counters = u32::from(self.binding_counters);
    }
}
