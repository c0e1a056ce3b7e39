//! `turn-bpf-kcheck`: can this kernel run turn-bpf? For every server profile it loads the BPF
//! object with the agent's settings for that profile, attaches XDP to a veth pair in native and
//! then generic mode, the TC egress snooper (a clsact qdisc) and the two drop-counting
//! tracepoints, checks the kernel reports each attachment, runs one ChannelData packet each way
//! through the loaded XDP program (BPF_PROG_TEST_RUN, the expected verdict and the exact rewritten
//! bytes), and detaches everything again.
//!
//! `scripts/kernels.sh` runs it inside a VM booted with another kernel; the VM's verdict is the
//! last line, `KCHECK PASS <release>` or `KCHECK FAIL <release>: <what failed>` (exit status 0 or
//! 1 as well). Needs root; works in a network namespace of its own (deleted at the end).

use std::net::{IpAddr, SocketAddrV4};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;

use turn_bpf::attach::{self, Attachments, Mode};
use turn_bpf::maps;
use turn_bpf::server_conf::profile::ServerKind;
use turn_bpf::skel::Rules;
use turn_bpf_testkit::progtest::*;

#[derive(Parser)]
#[command(
    name = "turn-bpf-kcheck",
    about = "Load, attach and run turn-bpf's programs on this kernel"
)]
struct Cli {
    /// Server profiles to load the programs for (default: every one).
    #[arg(long = "server", value_enum)]
    servers: Vec<ServerKind>,
    /// Name of the network namespace the checks build (deleted afterwards).
    #[arg(long, default_value = "tbk-kcheck")]
    netns: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into());
    match run(&cli) {
        Ok(()) => {
            println!("KCHECK PASS {release}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("KCHECK FAIL {release}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    ensure!(nix::unistd::geteuid().is_root(), "needs root");
    let servers = if cli.servers.is_empty() {
        vec![ServerKind::Coturn, ServerKind::Pion, ServerKind::Rfc8656]
    } else {
        cli.servers.clone()
    };
    let net = FibNet::new(&cli.netns).context("building the veth namespace")?;
    let _in = net.enter()?;
    // Every profile is checked even after one failed: each is loaded with other constants, so
    // the verifier may accept one and refuse another.
    let mut failed = Vec::new();
    for kind in servers {
        if let Err(e) = check_profile(&net, kind) {
            println!("kcheck: {kind}: FAILED: {e:#}");
            failed.push(format!("server profile {kind}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

/// The packet harness's configuration made the agent's own for `kind`: its profile's lifetimes
/// and rules, the agent's pending lifetime, and no trust in test-run sockets.
fn agent_config(kind: ServerKind) -> Config {
    let p = kind.profile();
    Config {
        turn_ports: vec![TURN_PORT],
        spill_every: 0,
        channel_lifetime_s: p.channel_lifetime_s,
        permission_lifetime_s: p.permission_lifetime_s,
        limits: MapLimits::default(),
        pending_lifetime_ms: turn_bpf::consts::TB_PENDING_LIFETIME_MS,
        trust_test_run: false,
        rules: Rules::of(p),
        // the agent's default (--binding-counters off)
        binding_counters: false,
    }
}

fn check_profile(net: &FibNet, kind: ServerKind) -> Result<()> {
    let step = |what: &str| println!("kcheck: {kind}: {what} ok");
    let p = Programs::load(
        &agent_config(kind),
        &[SERVER.into(), RELAY.into()] as &[IpAddr],
        &[net.turn0, net.relay0],
    )?;
    step("load");
    let skel = &p.skel;
    for (name, ifindex) in [("turn0", net.turn0), ("relay0", net.relay0)] {
        maps::add_xmit_iface(&skel.maps.xmit_ifaces, ifindex)?;
        ensure!(
            attach::xdp_attached(ifindex)?.is_none(),
            "{name} has an XDP program before the check attached one"
        );
    }

    let xdp = attach::prog_fd(&skel.progs.xdp_turn);
    let mut att = Attachments::default();
    for mode in [Mode::Generic, Mode::Native] {
        att.xdp.clear();
        for iface in ["turn0", "relay0"] {
            let link = attach::attach_xdp(xdp, iface, mode)?;
            match attach::xdp_attached(link.ifindex)? {
                Some((_, m)) if m == mode.name() => {}
                other => bail!(
                    "XDP on {iface} in {} mode: the kernel reports {other:?}",
                    mode.name()
                ),
            }
            att.xdp.push(link);
        }
        step(&format!("XDP link, {} mode, turn0 and relay0", mode.name()));
    }
    for (tp, prog) in [
        ("xdp:xdp_devmap_xmit", &skel.progs.tb_devmap_xmit),
        ("xdp:xdp_redirect_err", &skel.progs.tb_redirect_err),
    ] {
        let link = prog
            .attach()
            .with_context(|| format!("attaching to the tracepoint {tp}"))?;
        att.tracing.push((tp, link));
    }
    step("tracepoints xdp_devmap_xmit and xdp_redirect_err");
    att.tc.push(attach::attach_tc(
        attach::prog_fd(&skel.progs.tc_snoop),
        "turn0",
    )?);
    step("TC egress (clsact) on turn0");
    att.verify().map_err(anyhow::Error::msg)?;
    step("every attachment reported by the kernel");

    let client = SocketAddrV4::new(CLIENT, 40000);
    let relay = SocketAddrV4::new(RELAY, 50000);
    let peer = SocketAddrV4::new(PEER, 6000);
    p.install_channel(client, relay, peer, 0x4000, 60)?;
    p.expect_chan4_to_udp4(net, client, 0x4000, relay, peer, b"hello, peer")
        .context("ChannelData client -> peer")?;
    step("ChannelData client -> peer: XDP_REDIRECT, rewritten exactly");
    p.expect_udp4_to_chan4(net, peer, relay, client, 0x4000, b"hi client")
        .context("UDP peer -> client")?;
    step("UDP peer -> client: XDP_REDIRECT as ChannelData, rewritten exactly");

    att.detach_all();
    for (name, ifindex) in [("turn0", net.turn0), ("relay0", net.relay0)] {
        ensure!(
            attach::xdp_attached(ifindex)?.is_none(),
            "XDP still attached to {name} after detaching"
        );
    }
    step("detach");
    Ok(())
}
