//! What differs between TURN servers, one small table per server, and which one runs here.
//!
//! The agent mirrors a server's state from its answers; the answers say what was granted, but
//! not every rule behind them (what a ChannelBind does to the peer's permission, whether a
//! channel outlives its permission, which lifetimes apply when the answer carries none). Those
//! rules are read from each server's source and shown on the running server in the tests
//! (`tests/e2e_trust.rs`, `tests/e2e_lifetimes.rs` for coturn; `tests/pion_lab.rs` for pion):
//!
//! | | coturn 4.6.1 | pion/turn v2.1.0 | RFC 8656 (strict) |
//! |---|---|---|---|
//! | channel lifetime | `--channel-lifetime` (600) | `ChannelBindTimeout`, in the embedding program's code (600) | 600 |
//! | permission lifetime | `--permission-lifetime` (300) | 300, fixed | 300 |
//! | lifetimes readable from the server | yes (command line, config file) | no | no |
//! | ChannelBind sets the peer's permission to | the channel lifetime | the permission lifetime | the permission lifetime |
//! | CreatePermission on a bound peer | resets its permission, not the channel | refreshes the permission only | refreshes the permission only |
//! | a channel relays only while its permission lives | yes (deleted with it) | no | assumed yes |
//! | additional-family code point | 0x8032 | none | 0x8000 |
//! | 437 to a Refresh | yes (no allocation) | never | as the RFC says |
//! | ChannelData padding over UDP | 0–3 bytes accepted, sends none | any accepted, pads to 4 | may be padded |
//! | largest datagram relayed whole | 16,380 bytes of data each way | 1,596 to a peer, 1,600 to a client (`InboundMTU`, in the embedding code) | the smallest known: pion's |
//! | identified by | process `turnserver`, not a Go program, its executable naming `Coturn-4.6.1` | Go build information naming `github.com/pion/turn/v2` v2.1.0, not replaced | `--server rfc8656`, or any other server |
//!
//! Learning from the answers needs none of the informational rows: an Allocate answer lists the
//! relayed addresses it granted whatever code point asked for them, and a 437 is an error the
//! agent already acts on. The rows that change what is relayed are the lifetimes, the two
//! permission rules and the datagram sizes; the `rfc8656` profile takes the narrower choice of each, so it never relays
//! longer than an RFC 8656 server would.

use std::fmt;

use clap::ValueEnum;

/// The server profiles, by name (`--server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerKind {
    /// coturn 4.6.1: its settings are read from its command line and config file.
    Coturn,
    /// pion/turn v2.1.0 (alone or embedded in a Go program).
    Pion,
    /// Only what RFC 8656 guarantees; for any other server.
    Rfc8656,
}

/// One server's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub kind: ServerKind,
    /// How the log and the README name it.
    pub name: &'static str,
    /// Lifetimes when the server's own settings cannot be read (and no option gives them).
    pub channel_lifetime_s: u64,
    pub permission_lifetime_s: u64,
    /// The server's lifetimes can be read from the running server (its command line and
    /// config file).
    pub lifetimes_readable: bool,
    /// A ChannelBind sets the peer's permission to the channel lifetime (else to the
    /// permission lifetime).
    pub bind_permission_is_channel_lifetime: bool,
    /// A channel relays only while the permission it was bound under lives.
    pub channel_needs_permission: bool,
    /// The largest datagram (bytes of data) the server relays whole, client to peer and peer
    /// to client; a larger one goes to the server (which may drop or cut it).
    pub max_to_peer: u32,
    pub max_to_client: u32,
    /// A Refresh asking for a LIFETIME below this (but not 0) is granted this much: what the
    /// recorder may assume of a Refresh whose answer it has not seen yet (0: as asked).
    pub refresh_floor_s: u32,
    /// A Refresh without LIFETIME, or asking for `refresh_max_s` or more, is granted this much
    /// (0: nothing is assumed before the answer is seen).
    pub refresh_default_s: u32,
    pub refresh_max_s: u32,
    /// Before relaying on a port the server may bind a socket on it and close it again, so a
    /// socket on a relayed address closing does not alone say the allocation ended.
    pub probes_relay_ports: bool,
}

impl Profile {
    /// What a Refresh asking for `asked` (None: no LIFETIME; not 0) is granted, as far as the
    /// recorder may assume before the answer is seen (None: nothing assumed).
    pub fn refresh_grant(&self, asked: Option<u32>) -> Option<u32> {
        let capped = self.refresh_max_s != 0 && asked.is_some_and(|a| a >= self.refresh_max_s);
        let granted = match asked {
            Some(a) if !capped => a,
            _ if self.refresh_default_s != 0 => self.refresh_default_s,
            _ => return None,
        };
        Some(granted.max(self.refresh_floor_s))
    }
}

use crate::consts::TB_MAX_DATAGRAM;

/// coturn 4.6.1 reads every UDP datagram into a 16,384-byte buffer (`UDP_STUN_BUFFER_SIZE`) and
/// relays at most 16,380 bytes of data each way (`peer_input_handler`: the buffer less the
/// ChannelData header): a longer ChannelData is dropped, a longer peer datagram cut.
const COTURN_MAX_DATA: u32 = 16_380;
const _: () = assert!(COTURN_MAX_DATA as u64 <= TB_MAX_DATAGRAM);

/// pion v2.1.0 reads every datagram into a 1600-byte buffer (`rtpMTU`, `inboundMTU`): a client's
/// ChannelData with more than 1596 bytes of data is dropped, a peer's datagram over 1600 bytes
/// is cut to 1600.
const PION_BUFFER: u32 = 1600;

/// coturn 4.6.1 raises a Refresh's LIFETIME below 600 s (but not 0) to 600 s, whatever its
/// --max-allocate-lifetime (its clamps are an if/else-if chain: below the minimum is raised and
/// not capped after); tests/e2e_differential.rs shows a Refresh of 1 s granted 600 s.
const COTURN_MIN_LIFETIME: u32 = 600;

/// pion v2.1.0 (internal/server/util.go allocationLifeTime): a Refresh without LIFETIME, or
/// asking for an hour or more (maximumAllocationLifetime), is granted proto.DefaultLifetime.
const PION_DEFAULT_LIFETIME: u32 = 600;
const PION_MAX_LIFETIME: u32 = 3600;

pub const COTURN: Profile = Profile {
    kind: ServerKind::Coturn,
    name: "coturn 4.6.1",
    channel_lifetime_s: 600,
    permission_lifetime_s: 300,
    lifetimes_readable: true,
    bind_permission_is_channel_lifetime: true,
    channel_needs_permission: true,
    max_to_peer: COTURN_MAX_DATA,
    max_to_client: COTURN_MAX_DATA,
    refresh_floor_s: COTURN_MIN_LIFETIME,
    // coturn clamps a long LIFETIME to its --max-allocate-lifetime, not read here: nothing
    // assumed (the answer carries what it granted)
    refresh_default_s: 0,
    refresh_max_s: 0,
    // ns_ioalib_engine_impl.c create_relay_ioa_sockets: a relay socket is bound on a port from
    // its own pool, and one that fails to bind is closed unbound (port 0, nobody's address)
    probes_relay_ports: false,
};

pub const PION: Profile = Profile {
    kind: ServerKind::Pion,
    name: "pion/turn v2.1.0",
    channel_lifetime_s: 600,
    permission_lifetime_s: 300,
    lifetimes_readable: false,
    bind_permission_is_channel_lifetime: false,
    channel_needs_permission: false,
    max_to_peer: PION_BUFFER - 4,
    max_to_client: PION_BUFFER,
    // util.go allocationLifeTime: below 3600 s as asked, even 1 s; without LIFETIME, or 3600 s
    // and more, proto.DefaultLifetime (600 s)
    refresh_floor_s: 0,
    refresh_default_s: PION_DEFAULT_LIFETIME,
    refresh_max_s: PION_MAX_LIFETIME,
    // internal/allocation/allocation_manager.go GetRandomEvenPort: for an Allocate with
    // EVEN-PORT it binds a socket on a free port, closes it, and binds the allocation's relay
    // socket on that port if it is even
    probes_relay_ports: true,
};

pub const RFC8656: Profile = Profile {
    kind: ServerKind::Rfc8656,
    name: "RFC 8656 (strict)",
    channel_lifetime_s: 600,
    permission_lifetime_s: 300,
    lifetimes_readable: false,
    bind_permission_is_channel_lifetime: false,
    channel_needs_permission: true,
    max_to_peer: PION_BUFFER - 4,
    max_to_client: PION_BUFFER,
    refresh_floor_s: 0,
    // RFC 8656 section 7.2: without LIFETIME the default (10 minutes); above the server's
    // maximum, which is unknown here: the default too, the least any server grants then
    refresh_default_s: PION_DEFAULT_LIFETIME,
    refresh_max_s: PION_MAX_LIFETIME,
    // what a server does with its sockets is unknown: every close on a relayed address ends
    probes_relay_ports: false,
};

impl ServerKind {
    pub fn profile(self) -> &'static Profile {
        match self {
            ServerKind::Coturn => &COTURN,
            ServerKind::Pion => &PION,
            ServerKind::Rfc8656 => &RFC8656,
        }
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.profile().name)
    }
}

/// What is known of the process that holds the TURN sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerProcess {
    /// Its name (`/proc/PID/comm`).
    pub comm: String,
    /// The pion/turn module its executable was built with: (major version, version), the
    /// version "unknown" when the executable carries no module versions (a GOPATH build).
    pub pion: Option<(u32, String)>,
    /// Its executable is a Go program.
    pub go: bool,
    /// The coturn version its executable names (`Coturn-4.6.1 'Gorst'`), if any.
    pub coturn: Option<String>,
}

/// The only pion/turn version whose rules are proven here.
pub const PION_PROVEN: &str = "v2.1.0";
/// The only coturn version whose rules are proven here.
pub const COTURN_PROVEN: &str = "4.6.1";

/// The coturn version an executable names (`Coturn-4.6.1 'Gorst'`, its SOFTWARE string).
pub fn coturn_version(exe: &[u8]) -> Option<String> {
    const TAG: &[u8] = b"Coturn-";
    let at = exe.windows(TAG.len()).position(|w| w == TAG)? + TAG.len();
    let version: String = exe[at..]
        .iter()
        .take(16)
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|b| *b as char)
        .collect();
    (!version.is_empty()).then_some(version)
}

/// The profile for the server process found (or named with `--server`), and why, for the log.
pub fn choose(
    named: Option<ServerKind>,
    found: Option<&ServerProcess>,
) -> (&'static Profile, String) {
    if let Some(k) = named {
        return (k.profile(), format!("{k} (--server)"));
    }
    let Some(p) = found else {
        return (
            &RFC8656,
            "RFC 8656 (strict): the server process was not found".to_string(),
        );
    };
    // a Go program is never coturn, whatever its name
    if !p.go && p.comm == "turnserver" {
        return match p.coturn.as_deref() {
            Some(COTURN_PROVEN) => (
                &COTURN,
                format!("coturn {COTURN_PROVEN} (process '{}')", p.comm),
            ),
            v => (
                &RFC8656,
                format!(
                    "RFC 8656 (strict): process '{}' is {}, and only coturn {COTURN_PROVEN}'s \
                     rules are proven (give --server coturn to choose them)",
                    p.comm,
                    v.map_or(
                        "not a coturn the agent recognises".to_string(),
                        |v| format!("coturn {v}")
                    )
                ),
            ),
        };
    }
    match &p.pion {
        Some((2, v)) if v == PION_PROVEN => (
            &PION,
            format!("pion/turn {v} (Go build information of '{}')", p.comm),
        ),
        Some((major, v)) if v == "replaced" => (
            &RFC8656,
            format!(
                "RFC 8656 (strict): '{}' is built with a replaced pion/turn v{major} (a fork or a \
                 local copy): its code need not be {PION_PROVEN}'s as published (give --server \
                 pion to choose pion's rules)",
                p.comm
            ),
        ),
        Some((major, v)) => (
            &RFC8656,
            format!(
                "RFC 8656 (strict): '{}' is built with pion/turn {v} (major {major}); only \
                 {PION_PROVEN}'s rules are proven, and newer versions take their lifetimes \
                 from the embedding program's code (give --server pion and the lifetimes to \
                 choose otherwise)",
                p.comm
            ),
        ),
        None => (
            &RFC8656,
            format!(
                "RFC 8656 (strict): '{}' is neither coturn nor a pion/turn server{}",
                p.comm,
                if p.go { " (a Go program)" } else { "" }
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(comm: &str, pion: Option<(u32, &str)>) -> ServerProcess {
        ServerProcess {
            comm: comm.into(),
            pion: pion.map(|(m, v)| (m, v.to_string())),
            go: pion.is_some(),
            coturn: (comm == "turnserver" && pion.is_none()).then(|| "4.6.1".to_string()),
        }
    }

    #[test]
    fn the_server_process_picks_the_profile() {
        for (p, want) in [
            (process("turnserver", None), ServerKind::Coturn),
            // named turnserver, but a Go program (pion built so), or another coturn
            (process("turnserver", Some((2, "v2.1.0"))), ServerKind::Pion),
            (
                ServerProcess {
                    go: true,
                    ..process("turnserver", None)
                },
                ServerKind::Rfc8656,
            ),
            (
                ServerProcess {
                    coturn: Some("4.7.0".into()),
                    ..process("turnserver", None)
                },
                ServerKind::Rfc8656,
            ),
            (
                ServerProcess {
                    coturn: None,
                    ..process("turnserver", None)
                },
                ServerKind::Rfc8656,
            ),
            // a replaced (forked) pion/turn
            (
                process("turn-server", Some((2, "replaced"))),
                ServerKind::Rfc8656,
            ),
            (
                process("turn-server", Some((2, "v2.1.0"))),
                ServerKind::Pion,
            ),
            // another v2, a GOPATH build without versions, newer majors: the strict profile
            (
                process("turn-server", Some((2, "v2.1.6"))),
                ServerKind::Rfc8656,
            ),
            (
                process("turn-server", Some((2, "unknown"))),
                ServerKind::Rfc8656,
            ),
            (
                process("livekit-server", Some((4, "v4.0.0"))),
                ServerKind::Rfc8656,
            ),
            (
                process("stunnerd", Some((5, "v5.0.1"))),
                ServerKind::Rfc8656,
            ),
            (process("eturnal", None), ServerKind::Rfc8656),
        ] {
            let (got, why) = choose(None, Some(&p));
            assert_eq!(got.kind, want, "{p:?}: {why}");
        }
        assert_eq!(choose(None, None).0.kind, ServerKind::Rfc8656);
    }

    #[test]
    fn coturn_names_its_version() {
        assert_eq!(
            coturn_version(b"..\0Coturn-4.6.1 'Gorst'\0.."),
            Some("4.6.1".into())
        );
        assert_eq!(coturn_version(b"no version here"), None);
        assert_eq!(coturn_version(b"Coturn-"), None);
        // the installed coturn, when there is one
        if let Ok(exe) = std::fs::read("/usr/bin/turnserver") {
            assert_eq!(coturn_version(&exe).as_deref(), Some(COTURN_PROVEN));
        }
    }

    #[test]
    fn server_option_wins() {
        let coturn = process("turnserver", None);
        for k in [ServerKind::Coturn, ServerKind::Pion, ServerKind::Rfc8656] {
            assert_eq!(choose(Some(k), Some(&coturn)).0.kind, k);
            assert_eq!(choose(Some(k), None).0.kind, k);
        }
    }

    /// `a` never relays longer than `b` would: lifetimes no longer, a ChannelBind's permission
    /// no longer, and a channel tied to its permission wherever `b` ties it.
    fn no_wider(a: &Profile, b: &Profile) -> bool {
        let bind = |p: &Profile| {
            if p.bind_permission_is_channel_lifetime {
                p.channel_lifetime_s
            } else {
                p.permission_lifetime_s
            }
        };
        a.channel_lifetime_s <= b.channel_lifetime_s
            && a.permission_lifetime_s <= b.permission_lifetime_s
            && bind(a) <= bind(b)
            && (a.channel_needs_permission || !b.channel_needs_permission)
            && a.max_to_peer <= b.max_to_peer
            && a.max_to_client <= b.max_to_client
            && a.refresh_floor_s <= b.refresh_floor_s
            && [
                None,
                Some(1),
                Some(600),
                Some(3599),
                Some(3600),
                Some(86_400),
            ]
            .into_iter()
            .all(
                |asked| match (a.refresh_grant(asked), b.refresh_grant(asked)) {
                    (Some(x), Some(y)) => x <= y,
                    (Some(_), None) => true,
                    (None, other) => other.is_none(),
                },
            )
    }

    #[test]
    fn what_a_recorded_refresh_is_assumed_granted() {
        assert_eq!(PION.refresh_grant(None), Some(600));
        assert_eq!(PION.refresh_grant(Some(1)), Some(1));
        assert_eq!(PION.refresh_grant(Some(3599)), Some(3599));
        assert_eq!(PION.refresh_grant(Some(3600)), Some(600));
        assert_eq!(COTURN.refresh_grant(Some(1)), Some(600));
        assert_eq!(COTURN.refresh_grant(Some(3600)), Some(3600));
        assert_eq!(COTURN.refresh_grant(None), None);
    }

    #[test]
    fn the_strict_profile_is_never_wider_than_the_others() {
        for p in [&COTURN, &PION] {
            assert!(no_wider(&RFC8656, p), "{}", p.name);
        }
        // and the check can tell: pion's rules are wider than coturn's on the permission
        assert!(!no_wider(&PION, &COTURN));
    }
}
