//! Helpers shared by the integration tests that run the agent in a lab.
#![allow(dead_code)]

use std::path::PathBuf;

use turn_bpf_testkit::lab::{Host, Lab};

/// Why this test cannot run here (not root, coturn missing), or None.
pub fn skip() -> Option<String> {
    turn_bpf_testkit::lab::skip_reason()
}

#[macro_export]
macro_rules! skip_unless_lab {
    () => {
        if let Some(why) = common::skip() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_turn-bpf"))
}

pub fn log_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("{name}.log"))
}

/// Is an XDP program attached to `dev` in the server namespace?
pub fn xdp_attached(lab: &Lab, dev: &str) -> bool {
    lab.exec(Host::Srv, &["ip", "-d", "link", "show", "dev", dev])
        .map(|s| s.contains("prog/xdp"))
        .unwrap_or(false)
}

/// `tc filter show dev <dev> <dir>` in the server namespace.
pub fn tc_filters(lab: &Lab, dev: &str, dir: &str) -> String {
    lab.exec(Host::Srv, &["tc", "filter", "show", "dev", dev, dir])
        .unwrap_or_default()
}

pub fn has_clsact(lab: &Lab, dev: &str) -> bool {
    lab.exec(Host::Srv, &["tc", "qdisc", "show", "dev", dev])
        .map(|s| s.contains("clsact"))
        .unwrap_or(false)
}

pub fn forwarding(lab: &Lab, dev: &str) -> String {
    lab.exec(
        Host::Srv,
        &["sysctl", "-n", &format!("net.ipv4.conf.{dev}.forwarding")],
    )
    .unwrap_or_default()
    .trim()
    .to_string()
}

/// `net.ipv6.conf.<dev>.forwarding` in the server namespace.
pub fn forwarding6(lab: &Lab, dev: &str) -> String {
    sysctl(lab, &format!("net.ipv6.conf.{dev}.forwarding"))
}

/// `net.ipv6.conf.<dev>.accept_ra` in the server namespace.
pub fn accept_ra(lab: &Lab, dev: &str) -> String {
    sysctl(lab, &format!("net.ipv6.conf.{dev}.accept_ra"))
}

pub fn sysctl(lab: &Lab, key: &str) -> String {
    lab.exec(Host::Srv, &["sysctl", "-n", key])
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Nothing of the agent's is left on the lab's server interfaces.
pub fn assert_clean(lab: &Lab) {
    for dev in ["turn0", "relay0"] {
        assert!(!xdp_attached(lab, dev), "XDP left on {dev}");
        assert_eq!(
            tc_filters(lab, dev, "egress").trim(),
            "",
            "TC filter left on {dev}"
        );
        assert!(!has_clsact(lab, dev), "clsact qdisc left on {dev}");
        assert_eq!(forwarding(lab, dev), "0", "forwarding left on on {dev}");
        assert_eq!(
            forwarding6(lab, dev),
            "0",
            "IPv6 forwarding left on on {dev}"
        );
        assert_eq!(accept_ra(lab, dev), "1", "accept_ra not restored on {dev}");
    }
}

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use turn_bpf_testkit::lab;
use turn_bpf_testkit::turn_client::{echo_peer, TurnClient};

/// Sizes 1..=1400, every one of them over the first 1400 datagrams, in a scrambled order.
pub fn size_of(i: usize) -> usize {
    1 + (i * 389) % 1400
}

/// Datagram `i`'s payload: its size from `size_of`, its bytes from `i`.
pub fn payload(i: usize) -> Vec<u8> {
    let seed = (i as u32).wrapping_mul(2_654_435_761);
    (0..size_of(i))
        .map(|k| (seed >> (k % 4 * 8)) as u8 ^ k as u8)
        .collect()
}

/// A TURN client with the lab's credentials on a fresh socket in the client namespace.
pub fn client(lab: &Lab) -> TurnClient {
    let sock = lab::in_ns(&lab.ns(Host::Cli), || {
        UdpSocket::bind((lab::CLIENT_V4, 0)).expect("binding the client socket")
    });
    TurnClient::new(sock, lab::TURN_SERVER_V4, lab::TURN_USER, lab::TURN_PASS)
}

/// A TURN client with the lab's credentials on a fresh socket in the client namespace, reaching
/// the server over IPv6 (`v6`) or IPv4.
pub fn client_of(lab: &Lab, v6: bool) -> TurnClient {
    if !v6 {
        return client(lab);
    }
    let sock = lab::in_ns(&lab.ns(Host::Cli), || {
        UdpSocket::bind((lab::CLIENT_V6, 0)).expect("binding the client socket")
    });
    TurnClient::new(sock, lab::TURN_SERVER_V6, lab::TURN_USER, lab::TURN_PASS)
}

/// A UDP echo in the peer namespace; stops (and reports how many it echoed) on drop of `stop`.
pub struct Echo {
    pub addr: SocketAddr,
    pub sock: UdpSocket,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl Echo {
    pub fn start(lab: &Lab, port: u16) -> Echo {
        Echo::start_at(lab, lab::PEER_V4.into(), port)
    }

    /// An echo on `ip` (one of the peer's addresses, IPv4 or IPv6).
    pub fn start_at(lab: &Lab, ip: std::net::IpAddr, port: u16) -> Echo {
        Echo::start_in(lab, Host::Peer, ip, port)
    }

    /// An echo on `ip` in `host`'s namespace (a peer on the clients' side: `Host::Cli`).
    pub fn start_in(lab: &Lab, host: Host, ip: std::net::IpAddr, port: u16) -> Echo {
        let sock = lab::in_ns(&lab.ns(host), move || {
            UdpSocket::bind((ip, port)).expect("binding the echo socket")
        });
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Some(echo_peer(sock.try_clone().unwrap(), stop.clone()));
        Echo {
            addr,
            sock,
            stop,
            handle,
        }
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Send datagrams `from..from+n` on `channel` one at a time and check each echo byte for byte.
/// Returns how many came back (the first mismatch panics).
pub fn exchange(c: &TurnClient, channel: u16, from: usize, n: usize) -> usize {
    let mut buf = vec![0u8; 2048];
    let mut got = 0;
    for i in from..from + n {
        let p = payload(i);
        c.send_channel_data(channel, &p)
            .expect("sending ChannelData");
        match c
            .recv_channel_data(&mut buf, Duration::from_secs(1))
            .expect("receiving")
        {
            Some((ch, len)) => {
                assert_eq!(ch, channel, "datagram {i}: channel");
                assert_eq!(
                    &buf[..len],
                    &p[..],
                    "datagram {i} ({} bytes) came back changed",
                    p.len()
                );
                got += 1;
            }
            None => eprintln!("datagram {i} ({} bytes) was not echoed", p.len()),
        }
    }
    got
}

/// What reached client `c` from the server within `wait`: (Data indications, ChannelData on
/// `chan`).
pub fn arrivals(c: &TurnClient, chan: u16, wait: Duration) -> (usize, usize) {
    let mut buf = vec![0u8; 2048];
    let (mut ind, mut cd) = (0, 0);
    while let Some((n, _)) = c.recv_raw(&mut buf, wait).unwrap() {
        if n >= 20 && buf[0..2] == [0x00, 0x17] {
            ind += 1;
        } else if n >= 4 && u16::from_be_bytes([buf[0], buf[1]]) == chan {
            cd += 1;
        }
    }
    (ind, cd)
}

/// A bpffs mounted at /run/NAME for one test; unmounted (taking every pin with it) on drop.
pub struct PinFs {
    pub dir: PathBuf,
}

impl PinFs {
    pub fn mount(name: &str) -> PinFs {
        use std::process::Command;
        let dir = PathBuf::from(format!("/run/{name}"));
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status();
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a bpffs at {}", dir.display());
        PinFs { dir }
    }

    pub fn arg(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// The counters of the state pinned here.
    pub fn counters(&self) -> turn_bpf::stats::Counters {
        turn_bpf_testkit::live_counters::LiveCounters::pinned(&self.dir)
            .unwrap()
            .read()
            .unwrap()
    }
}

impl Drop for PinFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
