//! `turn-load`: the load generator, the micro-benchmark, and the whole benchmark.
//!
//! ```text
//! turn-load run   --lab NAME [--mode coturn|offload|forwarder] [--rate PPS | --flat-out] ...
//! turn-load micro [--runs N] [--trials T] [--json FILE]
//! turn-load scale [--runs N] [--trials T] [--levels 1,1000,100000] [--json FILE]
//! turn-load bench --lab NAME [--server coturn|pion|both] [--pion-lab NAME] [--quick] [--out DIR] ...
//! turn-load render [--out DIR]
//! ```
//!
//! `run` measures one offered load through an existing lab (`scripts/lab.sh up`); `micro` times
//! the BPF programs with BPF_PROG_TEST_RUN; `scale` times the client→peer path with the tables
//! holding 1, 1,000 and 100,000 snooped channels, and under churn (`turn_bpf_testkit::scale`); `bench` (what `scripts/bench.sh` runs) sweeps offered
//! loads in three modes — coturn alone, coturn with the turn-bpf agent attached ("offload"), and
//! plain UDP through the baseline XDP forwarder ("forwarder", the floor under any relay in this
//! lab) — alternating the modes at every load, runs the micro-benchmark, and writes
//! `summary.json`, `summary.md`, `chart.svg` and `runs.json`; `render` recomputes the summary,
//! its Markdown and the chart from a bench's `runs.json`. With `--server pion` the same sweep
//! runs pion/turn alone ("pion") and pion with the agent (`--server pion`, "pion_offload")
//! against the floor; `--server both` runs all five modes in one sweep, pion in a second lab.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use turn_bpf_testkit::baseline::{self, AttachedForwarder, MicroReport};
use turn_bpf_testkit::lab::{self, Host, Lab, TurnServer};
use turn_bpf_testkit::load::{self, AgentCounters, LoadConfig, LoadReport, PathMode, Roles};
use turn_bpf_testkit::scale::{self, ScaleReport};

#[derive(Parser)]
#[command(
    name = "turn-load",
    about = "TURN load generator and turn-bpf benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One measurement at one offered load through an existing lab.
    Run(RunArgs),
    /// The BPF_PROG_TEST_RUN micro-benchmark.
    Micro(MicroArgs),
    /// The fast path with 1, 1,000 and 100,000 live channels, and under churn.
    Scale(ScaleArgs),
    /// Diagnostic: a burst of clients through the loaded programs, against the pending table.
    Burst(BurstArgs),
    /// The agent's own upkeep at scale: full sweeps and destroy notices on real maps and sockets.
    SweepCost(SweepCostArgs),
    /// The whole benchmark: sweep, both modes and the floor, micro-benchmark, scale, summary.
    Bench(BenchArgs),
    /// Recompute summary.json, summary.md and chart.svg from a bench's runs.json (and the
    /// micro-benchmark, machine and configuration in its summary.json).
    Render(RenderArgs),
}

#[derive(ClapArgs)]
struct RenderArgs {
    /// The bench's output directory.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    /// coturn alone.
    Coturn,
    /// coturn with the turn-bpf agent attached.
    Offload,
    /// No TURN: plain UDP through the baseline XDP forwarder (the floor).
    Forwarder,
    /// pion/turn alone.
    Pion,
    /// pion/turn with the turn-bpf agent attached (`--server pion`).
    PionOffload,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Coturn => "coturn",
            Mode::Offload => "offload",
            Mode::Forwarder => "forwarder",
            Mode::Pion => "pion",
            Mode::PionOffload => "pion_offload",
        }
    }

    /// The TURN server this mode needs in its lab (`None`: any, the floor uses no TURN).
    fn server(self) -> Option<TurnServer> {
        match self {
            Mode::Coturn | Mode::Offload => Some(TurnServer::Coturn),
            Mode::Pion | Mode::PionOffload => Some(TurnServer::Pion),
            Mode::Forwarder => None,
        }
    }
}

/// A server alone and the same server with the agent: the modes compared side by side.
#[derive(Clone, Copy)]
struct Pair {
    /// What the prose calls the server.
    server: &'static str,
    alone: Mode,
    offload: Mode,
}

/// Every pair a bench can run, coturn's first.
const PAIRS: [Pair; 2] = [
    Pair {
        server: "coturn",
        alone: Mode::Coturn,
        offload: Mode::Offload,
    },
    Pair {
        server: "pion",
        alone: Mode::Pion,
        offload: Mode::PionOffload,
    },
];

/// Which TURN servers a bench measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ServerChoice {
    Coturn,
    Pion,
    /// coturn and pion in one sweep (pion in the lab named by `--pion-lab`).
    Both,
}

#[derive(ClapArgs, Clone)]
struct LoadArgs {
    /// Address family of the client, server and peer addresses (4 or 6): the lab has both.
    #[arg(long, default_value_t = load::Family::V4)]
    family: load::Family,
    /// Allocations (one channel each).
    #[arg(long, default_value_t = 16)]
    allocations: usize,
    /// UDP payload bytes of the peer datagrams.
    #[arg(long, default_value_t = 128)]
    payload: usize,
    /// Most datagrams per send call (UDP GSO segments).
    #[arg(long, default_value_t = load::MAX_BATCH)]
    batch: usize,
    /// Receivers sleep this long (µs) after a batch (user-space interrupt moderation).
    #[arg(long, default_value_t = 500)]
    moderation_us: u64,
    /// The turn-bpf binary (default: next to this one).
    #[arg(long)]
    agent: Option<PathBuf>,
}

#[derive(ClapArgs)]
struct RunArgs {
    /// Lab name (namespaces NAME-cli, NAME-srv, NAME-peer).
    #[arg(long, default_value = "tbb-bench")]
    lab: String,
    #[arg(long, value_enum, default_value_t = Mode::Coturn)]
    mode: Mode,
    /// Offered client→peer datagrams per second.
    #[arg(long, default_value_t = 10_000, conflicts_with = "flat_out")]
    rate: u64,
    /// Send as fast as possible.
    #[arg(long)]
    flat_out: bool,
    /// Seconds to send.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    #[command(flatten)]
    load: LoadArgs,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(ClapArgs)]
struct MicroArgs {
    /// Test runs (one program run each) per case per trial.
    #[arg(long, alias = "repeat", default_value_t = MICRO_RUNS)]
    runs: u32,
    /// Trials, each running every case once (medians are reported).
    #[arg(long, default_value_t = MICRO_TRIALS)]
    trials: usize,
    /// Name of the routing fixture namespace.
    #[arg(long, default_value = "tbb-micro")]
    ns: String,
    /// Load the programs with `--binding-counters` (per-binding counters on).
    #[arg(long)]
    binding_counters: bool,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(ClapArgs)]
struct BurstArgs {
    /// Clients, each an unauthenticated Allocate (401), a signed Allocate and a ChannelBind.
    #[arg(long, default_value_t = 10_000)]
    clients: u32,
    /// The pending table's size (`--max-pending`; the agent's default when left out).
    #[arg(long)]
    pending: Option<u32>,
    #[arg(long, default_value = "tbb-scale-burst")]
    ns: String,
}

#[derive(ClapArgs)]
struct ScaleArgs {
    /// Test runs (one program run, one channel's frame each) per case per trial.
    #[arg(long, default_value_t = SCALE_RUNS)]
    runs: u32,
    /// Trials, each running every case once (medians are reported).
    #[arg(long, default_value_t = SCALE_TRIALS)]
    trials: usize,
    /// Live channels of each level (the largest is also the churn case's).
    #[arg(long, value_delimiter = ',', default_values_t = scale::LEVELS)]
    levels: Vec<u32>,
    /// Name of the routing fixture namespace.
    #[arg(long, default_value = "tbb-scale")]
    ns: String,
    /// Leave the churn case out (to profile the quiet levels one at a time).
    #[arg(long)]
    no_churn: bool,
    /// Diagnostic: void every channel's validity cache before every timed case (as a commit
    /// that shortens a lifetime does), so every packet takes the slow path when --runs is at
    /// least the level's channels.
    #[arg(long)]
    void_caches: bool,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(ClapArgs)]
struct SweepCostArgs {
    /// Allocations (one channel and one permission each) of each measurement.
    #[arg(long, value_delimiter = ',', default_values_t = SWEEP_SIZES)]
    sizes: Vec<usize>,
    /// Interleaved repeats (medians are reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Name of the network namespace the relay sockets are bound in (made and deleted here).
    #[arg(long, default_value = "tbb-sweep")]
    ns: String,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The agent upkeep measurement's table sizes.
const SWEEP_SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// The scale benchmark's default runs per case per trial and trials (full; quick: a quarter
/// of the runs and 5 trials).
/// The scale benchmark's many-allocation load run: allocations (one channel each, allocating
/// at once before the measurement) and the offered load.
const SCALE_E2E_ALLOCATIONS: usize = 10_000;
const SCALE_E2E_PPS: u64 = 20_000;
const SCALE_RUNS: u32 = 100_000;
const SCALE_TRIALS: usize = 11;

#[derive(ClapArgs)]
struct BenchArgs {
    /// Lab name (must be up): its server is coturn, or pion with `--server pion`.
    #[arg(long, default_value = "tbb-bench")]
    lab: String,
    /// Which server to measure alone and with the agent: coturn, pion (pion/turn in `--lab`),
    /// or both (coturn in `--lab`, pion in `--pion-lab`).
    #[arg(long, value_enum, default_value_t = ServerChoice::Coturn)]
    server: ServerChoice,
    /// The lab running pion when `--server both` (must be up).
    #[arg(long)]
    pion_lab: Option<String>,
    /// Name of the micro-benchmark's routing fixture namespace.
    #[arg(long, default_value = "tbb-micro")]
    micro_ns: String,
    /// Name of the scale benchmark's routing fixture namespace.
    #[arg(long, default_value = "tbb-scale")]
    scale_ns: String,
    /// Test runs per case per trial of the scale benchmark (default 100000 full, 25000 quick).
    #[arg(long)]
    scale_runs: Option<u32>,
    /// Trials of the scale benchmark (default 11 full, 5 quick).
    #[arg(long)]
    scale_trials: Option<usize>,
    /// The reduced sweep and micro-benchmark (about 2 minutes).
    #[arg(long)]
    quick: bool,
    /// Where the results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Offered loads (client→peer datagrams/s), comma-separated; flat out is always added.
    #[arg(long, value_delimiter = ',')]
    loads: Vec<u64>,
    /// Seconds per point (default 2 quick, 6 full).
    #[arg(long)]
    duration: Option<f64>,
    /// Rounds over the sweep (default 1 quick, 2 full; the second in reverse order).
    #[arg(long)]
    rounds: Option<usize>,
    /// Test runs per case per trial in the micro-benchmark (default 20000 full, 5000 quick).
    #[arg(long, alias = "repeat")]
    micro_runs: Option<u32>,
    /// Trials of the micro-benchmark (default 21 full, 11 quick).
    #[arg(long)]
    micro_trials: Option<usize>,
    /// The micro-benchmark's programs loaded with `--binding-counters`.
    #[arg(long)]
    binding_counters: bool,
    /// Skip the forwarder (floor) mode.
    #[arg(long)]
    no_floor: bool,
    /// Longest wait (s) before a point for other users of the machine to calm down (default 2
    /// quick, 4 full).
    #[arg(long)]
    quiet_wait: Option<f64>,
    #[command(flatten)]
    load: LoadArgs,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    libbpf_rs::set_print(None);
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(a) => cmd_run(a),
        Cmd::Micro(a) => cmd_micro(a),
        Cmd::Scale(a) => cmd_scale(a),
        Cmd::Burst(a) => need_root().and_then(|()| {
            let pending = a
                .pending
                .unwrap_or(turn_bpf::sizing::Sizes::default().pending);
            let r = scale::run_burst(&a.ns, a.clients, pending)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }),
        Cmd::SweepCost(a) => need_root().and_then(|()| {
            let r = turn_bpf_testkit::sweep_cost::measure(&a.sizes, a.repeats, &a.ns)?;
            print!("{}", turn_bpf_testkit::sweep_cost::render(&r));
            if let Some(p) = a.json {
                write_json(&p, &r)?;
            }
            Ok(())
        }),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Render(a) => cmd_render(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turn-load: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn need_root() -> Result<()> {
    if !lab::is_root() {
        bail!("needs root (network namespaces, BPF)");
    }
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

// ------------------------------------------------------------------------------------------
// One point
// ------------------------------------------------------------------------------------------

/// One measured point of the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Point {
    mode: Mode,
    round: usize,
    /// `None`: flat out.
    target_pps: Option<u64>,
    /// Other users' share of the machine just before the run, %.
    other_before_pct: f64,
    report: LoadReport,
    /// The agent's counters (offload mode).
    agent: Option<AgentCounters>,
    /// Datagrams relayed in XDP / datagrams relayed, % (offload mode).
    offloaded_pct: Option<f64>,
}

/// Runs one point: sets the mode up, measures, takes it down again.
fn measure(
    lab: &Lab,
    mode: Mode,
    rate: Option<u64>,
    duration: Duration,
    quiet: Duration,
    la: &LoadArgs,
) -> Result<(LoadReport, Option<AgentCounters>, f64)> {
    let mut cfg = LoadConfig::for_lab_family(lab, la.family);
    cfg.rate = rate;
    cfg.duration = duration;
    cfg.allocations = la.allocations;
    cfg.payload_len = la.payload;
    cfg.batch = la.batch;
    cfg.moderation = Duration::from_micros(la.moderation_us);
    let srv = lab.ns(Host::Srv);
    let mut agent = None;
    let mut fwd = None;
    if let Some(want) = mode.server() {
        if lab.server() != want {
            bail!(
                "mode {} needs {} in its lab, and lab {} runs {}",
                mode.name(),
                want.script_name(),
                lab.name(),
                lab.server().script_name()
            );
        }
    }
    match mode {
        Mode::Coturn | Mode::Pion => {}
        Mode::Offload | Mode::PionOffload => {
            let bin = la.agent.clone().unwrap_or_else(load::default_agent_path);
            // The lab's pion is built from Debian's sources through a go.mod `replace`, which
            // the agent's detection takes for a fork (strict RFC 8656 profile): name it.
            let mut args = vec!["--enable-forwarding"];
            if mode == Mode::PionOffload {
                args.extend(["--server", "pion"]);
            }
            args.extend([lab::IFACE, lab::RELAY_IFACE]);
            agent = Some(load::start_agent(&bin, &srv, &args)?);
            cfg.agent_pid = agent.as_ref().map(turn_bpf_testkit::agent::AgentProc::pid);
        }
        Mode::Forwarder => {
            cfg.path = PathMode::Plain;
            fwd = Some(AttachedForwarder::attach_families(
                &srv,
                &[lab::IFACE, lab::RELAY_IFACE],
                la.family == load::Family::V6,
            )?);
        }
    }
    let roles = Roles {
        generator: std::process::id(),
        coturn: cfg.coturn_pid,
        agent: cfg.agent_pid,
    };
    // Other users of a shared machine: wait (a little) for a quiet moment.
    let other = load::wait_for_quiet(&roles, 10.0, quiet)?;
    let report = load::run(&cfg);
    drop(fwd);
    let counters = match agent {
        Some(a) => Some(a.stop_counters()?),
        None => None,
    };
    Ok((report?, counters, other))
}

fn cmd_run(a: RunArgs) -> Result<()> {
    need_root()?;
    let lab = Lab::existing(&a.lab)?;
    let rate = (!a.flat_out).then_some(a.rate);
    let (r, counters, other) = measure(
        &lab,
        a.mode,
        rate,
        Duration::from_secs_f64(a.duration),
        Duration::from_secs(3),
        &a.load,
    )?;
    // (IPv4, the default, prints as it always has.)
    let family = match a.load.family {
        load::Family::V4 => "",
        load::Family::V6 => ", IPv6",
    };
    println!(
        "mode {}{family} (other users before the run: {other:.1}%)",
        a.mode.name()
    );
    print!("{}", r.render());
    if let Some(c) = &counters {
        println!("agent counters: {c:?}");
    }
    if let Some(p) = a.json {
        write_json(&p, &r)?;
    }
    Ok(())
}

fn cmd_micro(a: MicroArgs) -> Result<()> {
    need_root()?;
    let m = baseline::run_micro(&a.ns, a.runs, a.trials, a.binding_counters)?;
    print!("{}", render_micro(&m));
    if let Some(p) = a.json {
        write_json(&p, &m)?;
    }
    Ok(())
}

fn cmd_scale(a: ScaleArgs) -> Result<()> {
    need_root()?;
    let r = scale::run_scale(
        &a.ns,
        &a.levels,
        a.runs,
        a.trials,
        !a.no_churn,
        a.void_caches,
    )?;
    print!("{}", render_scale(&r));
    if let Some(p) = a.json {
        write_json(&p, &r)?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The bench
// ------------------------------------------------------------------------------------------

/// A point averaged over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PointSummary {
    /// `None`: flat out.
    target_pps: Option<u64>,
    label: String,
    /// Client→peer datagrams offered per second (what the sender managed).
    offered_pps: f64,
    /// Client→peer datagrams delivered at the echo per second.
    c2p_delivered_pps: f64,
    /// Peer→client datagrams delivered at the client per second.
    p2c_delivered_pps: f64,
    /// Round trips completed per second (each datagram relayed twice).
    delivered_pps: f64,
    /// Relayed datagrams per second (both directions).
    relayed_pps: f64,
    /// Round-trip loss, %.
    loss_pct: f64,
    /// CPU of the run per relayed datagram, ns.
    cpu_ns_per_pkt: f64,
    /// The whole machine's busy time (other users included) per relayed datagram, ns.
    machine_ns_per_pkt: f64,
    /// The TURN server's CPU (coturn's, or pion's in the pion modes), % of one CPU.
    coturn_cpu_pct: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    rtt_p999_us: f64,
    /// Machine busy time not the run's during the run, % of all CPUs.
    other_pct: f64,
    /// Offload mode: share of relayed datagrams the agent relayed in XDP, %.
    offloaded_pct: Option<f64>,
    rounds: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModeSummary {
    /// Most round trips per second delivered at any offered load (each datagram relayed twice).
    max_delivered_pps: f64,
    /// Most relayed datagrams per second (both directions) at any offered load.
    max_relayed_pps: f64,
    /// The load at which max_delivered_pps was reached.
    max_delivered_at: String,
    /// At the common offered load: CPU of the run per relayed datagram, ns.
    cpu_ns_per_pkt: f64,
    /// At the common offered load: the whole machine's busy time per relayed datagram, ns.
    machine_ns_per_pkt: f64,
    /// At the common offered load: the TURN server's CPU (coturn's, or pion's in the pion
    /// modes), % of one CPU.
    coturn_cpu_pct: f64,
    /// At the common offered load: round-trip loss, %.
    loss_pct: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    rtt_p999_us: f64,
    /// The common offered load of the figures above: the highest at which this mode's server
    /// alone lost < 0.1% (the floor takes the first pair's).
    #[serde(default)]
    common_load_pps: Option<u64>,
    /// Round trips delivered per second flat out, by round (0-based), for ratios to the
    /// floor's of the same round.
    #[serde(default)]
    flat_out_by_round: BTreeMap<usize, f64>,
    points: Vec<PointSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Goal {
    goal: String,
    target: String,
    measured: String,
    met: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MachineInfo {
    nproc: usize,
    cpu_model: String,
    kernel: String,
    coturn_version: String,
    /// The Debian package pion/turn was built from, when pion was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pion_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchConfig {
    quick: bool,
    /// Address family of the load (4 or 6).
    #[serde(default)]
    family: load::Family,
    duration_s: f64,
    rounds: usize,
    loads: Vec<u64>,
    allocations: usize,
    payload_len: usize,
    batch: usize,
    moderation_us: u64,
    /// Test runs per case per trial of the micro-benchmark.
    #[serde(alias = "micro_repeat")]
    micro_runs: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Summary {
    machine: MachineInfo,
    config: BenchConfig,
    /// The common offered load (client→peer datagrams/s) of the per-mode figures: the highest
    /// at which coturn alone lost < 0.1% (pion alone, when coturn was not measured). Each mode
    /// has its own pair's in `modes.*.common_load_pps`.
    common_load_pps: u64,
    modes: BTreeMap<String, ModeSummary>,
    /// Side by side: how many times better the offload is (coturn / offload, or offload /
    /// coturn for rates; pion / pion_offload likewise), and the offload against the floor.
    ratios: BTreeMap<String, f64>,
    micro: MicroReport,
    goals: Vec<Goal>,
    /// The fast path at 1, 1,000 and 100,000 live channels and under churn, and the state
    /// tables' memory (absent from a summary written before it was measured).
    #[serde(default)]
    scale: Option<ScaleReport>,
    elapsed_s: f64,
}

fn machine_info(pion: bool) -> MachineInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("?".into(), |(_, v)| v.trim().to_string());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into());
    let version = |package: &str| {
        std::process::Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", package])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map_or("?".into(), |o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
            })
    };
    MachineInfo {
        nproc: load::online_cpus(),
        cpu_model,
        kernel,
        coturn_version: version("coturn"),
        pion_version: pion.then(|| {
            format!(
                "pion/turn v2.1.0 (golang-github-pion-turn.v2-dev {})",
                version("golang-github-pion-turn.v2-dev")
            )
        }),
    }
}

fn label(target: Option<u64>) -> String {
    match target {
        None => "flat out".into(),
        Some(r) if r % 1000 == 0 => format!("{}k", r / 1000),
        Some(r) => r.to_string(),
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn summarize_points(points: &[Point], mode: Mode) -> Vec<PointSummary> {
    let mut targets: Vec<Option<u64>> = points
        .iter()
        .filter(|p| p.mode == mode)
        .map(|p| p.target_pps)
        .collect();
    // Ascending, flat out last.
    targets.sort_by_key(|t| t.unwrap_or(u64::MAX));
    targets.dedup();
    targets
        .into_iter()
        .map(|t| {
            let ps: Vec<&Point> = points
                .iter()
                .filter(|p| p.mode == mode && p.target_pps == t)
                .collect();
            let m = |f: &dyn Fn(&Point) -> f64| mean(ps.iter().map(|p| f(p)));
            let offloaded = ps
                .iter()
                .filter_map(|p| p.offloaded_pct)
                .collect::<Vec<_>>();
            PointSummary {
                target_pps: t,
                label: label(t),
                offered_pps: m(&|p| p.report.c2p.offered_pps),
                c2p_delivered_pps: m(&|p| p.report.c2p.delivered_pps),
                p2c_delivered_pps: m(&|p| p.report.p2c.delivered_pps),
                delivered_pps: m(&|p| p.report.round_trip.delivered_pps),
                relayed_pps: m(&|p| p.report.relayed_pps),
                loss_pct: m(&|p| p.report.round_trip.loss_pct),
                cpu_ns_per_pkt: m(&|p| p.report.cpu_ns_per_relayed),
                machine_ns_per_pkt: m(&|p| p.report.machine_ns_per_relayed),
                coturn_cpu_pct: m(&|p| p.report.coturn_cpu_pct.unwrap_or(f64::NAN)),
                rtt_p50_us: m(&|p| p.report.rtt.p50_us),
                rtt_p99_us: m(&|p| p.report.rtt.p99_us),
                rtt_p999_us: m(&|p| p.report.rtt.p999_us),
                other_pct: m(&|p| p.report.cpu.other_pct()),
                offloaded_pct: (!offloaded.is_empty()).then(|| mean(offloaded.into_iter())),
                rounds: ps.len(),
            }
        })
        .collect()
}

/// Loss below this is "no loss" (the goal's threshold).
const LOSS_OK_PCT: f64 = 0.1;

/// The highest fixed offered load at which coturn alone lost < 0.1% (the lowest load if it
/// lost more everywhere).
fn common_load(coturn: &[PointSummary]) -> Option<u64> {
    let fixed: Vec<&PointSummary> = coturn.iter().filter(|p| p.target_pps.is_some()).collect();
    fixed
        .iter()
        .filter(|p| p.loss_pct < LOSS_OK_PCT)
        .filter_map(|p| p.target_pps)
        .max()
        .or_else(|| fixed.iter().filter_map(|p| p.target_pps).min())
}

fn mode_summary(points: Vec<PointSummary>, common: Option<u64>) -> ModeSummary {
    let best = points
        .iter()
        .max_by(|a, b| a.delivered_pps.total_cmp(&b.delivered_pps));
    let at = points
        .iter()
        .find(|p| p.target_pps == common && common.is_some());
    let f = |g: &dyn Fn(&PointSummary) -> f64| at.map_or(f64::NAN, g);
    ModeSummary {
        max_delivered_pps: best.map_or(f64::NAN, |p| p.delivered_pps),
        max_relayed_pps: points
            .iter()
            .map(|p| p.relayed_pps)
            .fold(f64::NAN, f64::max),
        max_delivered_at: best.map_or("-".into(), |p| p.label.clone()),
        cpu_ns_per_pkt: f(&|p| p.cpu_ns_per_pkt),
        machine_ns_per_pkt: f(&|p| p.machine_ns_per_pkt),
        coturn_cpu_pct: f(&|p| p.coturn_cpu_pct),
        loss_pct: f(&|p| p.loss_pct),
        rtt_p50_us: f(&|p| p.rtt_p50_us),
        rtt_p99_us: f(&|p| p.rtt_p99_us),
        rtt_p999_us: f(&|p| p.rtt_p999_us),
        common_load_pps: common,
        flat_out_by_round: BTreeMap::new(),
        points,
    }
}

/// Waits, at most `limit`, until the lab's server holds no relay socket (a UDP socket on a
/// relay port); returns how many are left. A run gives its allocations back at its end, and
/// coturn closes their sockets over the next second or two: a client of the next run given the
/// ephemeral port of an allocation still there is refused (437), and the agent leaves a new
/// allocation on a port closed in the last 10 s to the server.
fn relays_released(lab: &Lab, limit: Duration) -> Result<usize> {
    let started = std::time::Instant::now();
    loop {
        let left = relay_sockets(&lab.exec(Host::Srv, &["ss", "-Huan"])?);
        if left == 0 || started.elapsed() >= limit {
            return Ok(left);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The UDP sockets on a relay port in `ss -Huan`'s output (local address in the fourth column).
fn relay_sockets(ss: &str) -> usize {
    ss.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|local| local.rsplit_once(':'))
        .filter_map(|(_, port)| port.parse::<u16>().ok())
        .filter(|p| (lab::RELAY_PORT_MIN..=lab::RELAY_PORT_MAX).contains(p))
        .count()
}

/// Flat out, by round: each round's delivered round trips per second of `mode`.
fn flat_out_by_round(points: &[Point], mode: Mode) -> BTreeMap<usize, f64> {
    points
        .iter()
        .filter(|p| p.mode == mode && p.target_pps.is_none())
        .map(|p| (p.round, p.report.round_trip.delivered_pps))
        .collect()
}

/// The offload's flat-out rate over the floor forwarder's, one ratio per round in which both
/// were measured (a round that lacks either is left out), with their median, minimum and
/// maximum; `None` without any such round.
fn flat_out_over_floor(
    modes: &BTreeMap<String, ModeSummary>,
    offload: &ModeSummary,
) -> Option<(Vec<f64>, f64, f64, f64)> {
    let floor = &modes.get("forwarder")?.flat_out_by_round;
    let r: Vec<f64> = offload
        .flat_out_by_round
        .iter()
        .filter_map(|(round, o)| Some(o / floor.get(round)?))
        .filter(|x| x.is_finite())
        .collect();
    if r.is_empty() {
        return None;
    }
    let min = r.iter().copied().fold(f64::INFINITY, f64::min);
    let max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let med = turn_bpf_testkit::baseline::median(&r);
    Some((r, med, min, max))
}

/// The goal for the offload's flat-out rate against the floor forwarder's.
const FLAT_OUT_GOAL: f64 = 0.95;

fn ratios(modes: &BTreeMap<String, ModeSummary>, micro: &MicroReport) -> BTreeMap<String, f64> {
    let mut r = BTreeMap::new();
    for pair in PAIRS {
        pair_ratios(modes, pair, &mut r);
    }
    if r.is_empty() {
        return r;
    }
    for c in micro.paths_by_ratio() {
        if let (Some(v), Some(vs)) = (c.ratio, &c.vs) {
            r.insert(format!("{}_over_{vs}", c.name), v);
        }
    }
    r
}

/// The floor's point at `pair`'s common load (the floor was measured at every load).
fn floor_at<'a>(
    modes: &'a BTreeMap<String, ModeSummary>,
    alone: &ModeSummary,
) -> Option<&'a PointSummary> {
    let common = alone.common_load_pps?;
    modes
        .get("forwarder")?
        .points
        .iter()
        .find(|p| p.target_pps == Some(common))
}

/// One pair's ratios, keyed by its mode names (coturn's: `cpu_per_pkt_coturn_over_offload`,
/// pion's: `cpu_per_pkt_pion_over_pion_offload`, ...).
fn pair_ratios(modes: &BTreeMap<String, ModeSummary>, pair: Pair, r: &mut BTreeMap<String, f64>) {
    let (an, on) = (pair.alone.name(), pair.offload.name());
    let (Some(c), Some(o)) = (modes.get(an), modes.get(on)) else {
        return;
    };
    r.insert(
        format!("cpu_per_pkt_{an}_over_{on}"),
        c.cpu_ns_per_pkt / o.cpu_ns_per_pkt,
    );
    r.insert(
        format!("machine_per_pkt_{an}_over_{on}"),
        c.machine_ns_per_pkt / o.machine_ns_per_pkt,
    );
    r.insert(
        format!("max_delivered_{on}_over_{an}"),
        o.max_delivered_pps / c.max_delivered_pps,
    );
    r.insert(
        format!("rtt_p50_{an}_over_{on}"),
        c.rtt_p50_us / o.rtt_p50_us,
    );
    r.insert(
        format!("rtt_p99_{an}_over_{on}"),
        c.rtt_p99_us / o.rtt_p99_us,
    );
    if let (Some(f), Some(fmax)) = (
        floor_at(modes, c),
        modes.get("forwarder").map(|f| f.max_delivered_pps),
    ) {
        // What each relay adds above the floor (the endpoints' own stacks and the forwarding
        // every path pays), per relayed datagram.
        let (rc, ro) = (
            c.cpu_ns_per_pkt - f.cpu_ns_per_pkt,
            o.cpu_ns_per_pkt - f.cpu_ns_per_pkt,
        );
        r.insert(format!("relay_cpu_above_floor_{an}_ns"), rc);
        r.insert(format!("relay_cpu_above_floor_{on}_ns"), ro);
        // Only meaningful when the offload is measurably above the floor (5% of it); below
        // that it is within the noise of two separate runs, and the ratio is left out.
        if ro > 0.05 * f.cpu_ns_per_pkt {
            r.insert(format!("relay_cpu_above_floor_{an}_over_{on}"), rc / ro);
        }
        r.insert(
            format!("{on}_cpu_over_floor"),
            o.cpu_ns_per_pkt / f.cpu_ns_per_pkt,
        );
        r.insert(
            format!("{on}_max_delivered_over_floor"),
            o.max_delivered_pps / fmax,
        );
    }
    if let Some((_, med, min, max)) = flat_out_over_floor(modes, o) {
        r.insert(format!("{on}_flat_out_over_floor"), med);
        r.insert(format!("{on}_flat_out_over_floor_min"), min);
        r.insert(format!("{on}_flat_out_over_floor_max"), max);
    }
}

fn goals(modes: &BTreeMap<String, ModeSummary>, micro: &MicroReport) -> Vec<Goal> {
    let mut g = Vec::new();
    let mut rtt = Vec::new();
    for pair in PAIRS {
        if let Some((mut pg, prtt)) = pair_goals(modes, pair) {
            g.append(&mut pg);
            rtt.push(prtt);
        }
    }
    if g.is_empty() {
        return g;
    }
    g.push(fast_path_goal(micro));
    // The accounting's own clock reads (stats_floor) are in every accounted figure; an absolute
    // budget is for the program's own instructions, so it is judged above that floor.
    let (unrelated, floor) = (micro.get("unrelated_ns"), micro.get("stats_floor_ns"));
    g.push(Goal {
        goal: "Unrelated datagram ≤ 30 ns".into(),
        target: "≤ 30 ns".into(),
        measured: format!(
            "{:.1} ns above the accounting floor ({unrelated:.1} ns as the kernel accounts \
             xdp_turn, {floor:.1} ns of it the accounting's own clock reads)",
            unrelated - floor
        ),
        met: unrelated - floor <= 30.0,
    });
    g.append(&mut rtt);
    g
}

/// One pair's goals: (those on CPU, rate, loss, the server's CPU and, when the floor ran, the
/// flat-out rate; the one on RTT). coturn's read as they always have; pion's start with
/// "pion: ".
fn pair_goals(modes: &BTreeMap<String, ModeSummary>, pair: Pair) -> Option<(Vec<Goal>, Goal)> {
    let (c, o) = (
        modes.get(pair.alone.name())?,
        modes.get(pair.offload.name())?,
    );
    let server = pair.server;
    let prefix = if pair.alone == Mode::Coturn {
        String::new()
    } else {
        format!("{server}: ")
    };
    let common = c.common_load_pps.unwrap_or(0);
    let mut g = Vec::new();
    let ratio = o.cpu_ns_per_pkt / c.cpu_ns_per_pkt;
    let floor = floor_at(modes, c).map_or(String::new(), |f| {
        format!(
            "; the floor alone (no TURN, plain XDP forwarding) costs {:.0} ns: above it {server} \
             adds {:.0} ns, the offload {:.0} ns",
            f.cpu_ns_per_pkt,
            c.cpu_ns_per_pkt - f.cpu_ns_per_pkt,
            o.cpu_ns_per_pkt - f.cpu_ns_per_pkt
        )
    });
    g.push(Goal {
        goal: format!(
            "{prefix}CPU per relayed datagram with offload ≤ 1/5 of {server}'s (same offered load)"
        ),
        target: "≤ 0.20×".into(),
        measured: format!(
            "{:.2}× ({:.0} vs {:.0} ns at {} pps{floor})",
            ratio, o.cpu_ns_per_pkt, c.cpu_ns_per_pkt, common,
        ),
        met: ratio <= 0.2,
    });
    let rate = o.max_delivered_pps / c.max_delivered_pps;
    g.push(Goal {
        goal: format!("{prefix}Delivered rate at saturation ≥ 5× {server}'s"),
        target: "≥ 5×".into(),
        measured: format!(
            "{:.2}× ({:.0} vs {:.0} round trips/s)",
            rate, o.max_delivered_pps, c.max_delivered_pps
        ),
        met: rate >= 5.0,
    });
    // Loss where the server alone is below saturation.
    let below: Vec<&PointSummary> = c
        .points
        .iter()
        .filter(|p| p.target_pps.is_some() && p.loss_pct < LOSS_OK_PCT)
        .collect();
    let worst = below
        .iter()
        .filter_map(|p| o.points.iter().find(|q| q.target_pps == p.target_pps))
        .map(|q| q.loss_pct)
        .fold(0.0, f64::max);
    g.push(Goal {
        goal: format!("{prefix}Offload loss < 0.1% wherever {server} is below saturation"),
        target: "< 0.1%".into(),
        measured: format!(
            "worst {:.3}% over {} loads ({})",
            worst,
            below.len(),
            below
                .iter()
                .map(|p| p.label.clone())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        met: !below.is_empty() && worst < LOSS_OK_PCT,
    });
    let server_max = o
        .points
        .iter()
        .map(|p| p.coturn_cpu_pct)
        .fold(0.0, f64::max);
    g.push(Goal {
        goal: format!("{prefix}{server}'s own CPU during an offloaded flow < 1%"),
        target: "< 1%".into(),
        measured: format!(
            "{:.2}% at most (all loads, flat out included); {:.2}% at {} pps",
            server_max, o.coturn_cpu_pct, common
        ),
        met: server_max < 1.0,
    });
    if let Some((r, med, min, max)) = flat_out_over_floor(modes, o) {
        g.push(Goal {
            goal: format!(
                "{prefix}Flat-out delivered rate with offload ≥ 0.95× the floor forwarder's"
            ),
            target: format!("≥ {FLAT_OUT_GOAL:.2}×"),
            measured: format!(
                "{med:.2}× (median of {} rounds, each against the floor's flat out in the same \
                 round; {min:.2}–{max:.2})",
                r.len()
            ),
            met: med >= FLAT_OUT_GOAL,
        });
    }
    let rtt = Goal {
        goal: format!("{prefix}RTT p50 and p99 lower than {server}'s"),
        target: "both lower".into(),
        measured: format!(
            "p50 {:.0} vs {:.0} µs, p99 {:.0} vs {:.0} µs at {} pps",
            o.rtt_p50_us, c.rtt_p50_us, o.rtt_p99_us, c.rtt_p99_us, common
        ),
        met: o.rtt_p50_us < c.rtt_p50_us && o.rtt_p99_us < c.rtt_p99_us,
    };
    Some((g, rtt))
}

/// The goal for every relay path: ≤ 1.3× its output family's baseline forwarder (median of the
/// per-trial ratios); the paths that miss it are named with by how much.
fn fast_path_goal(micro: &MicroReport) -> Goal {
    let paths = micro.paths_by_ratio();
    let worst = paths.first().and_then(|c| c.ratio).unwrap_or(f64::NAN);
    let misses: Vec<String> = paths
        .iter()
        .filter(|c| c.ratio.is_some_and(|r| r > FAST_PATH_GOAL))
        .map(|c| {
            format!(
                "{} {:.2}× ({:.0}% over)",
                c.name,
                c.ratio.unwrap_or(f64::NAN),
                (c.ratio.unwrap_or(f64::NAN) / FAST_PATH_GOAL - 1.0) * 100.0
            )
        })
        .collect();
    Goal {
        goal: "Every relay path ≤ 1.3× its output family's baseline forwarder".into(),
        target: "≤ 1.30×".into(),
        measured: format!(
            "worst {:.2}× of {} paths ({:.2}× net of the accounting floor; baseline4 {:.0} ns, \
             baseline6 {:.0} ns){}",
            worst,
            paths.len(),
            paths.first().and_then(|c| c.net_ratio).unwrap_or(f64::NAN),
            micro.get("baseline4_ns"),
            micro.get("baseline6_ns"),
            if misses.is_empty() {
                String::new()
            } else {
                format!("; over: {}", misses.join(", "))
            }
        ),
        met: !paths.is_empty() && worst <= FAST_PATH_GOAL,
    }
}

/// The team's goal for every relay path against its family's baseline forwarder.
const FAST_PATH_GOAL: f64 = 1.3;
/// Micro-benchmark defaults: test runs per case per trial, and trials.
const MICRO_RUNS: u32 = 20_000;
const MICRO_TRIALS: usize = 21;

/// The labs of a bench: each pair measured with the lab running its server; the floor runs in
/// the first.
struct BenchLabs {
    pairs: Vec<(Pair, Lab)>,
}

impl BenchLabs {
    fn of(&self, mode: Mode) -> &Lab {
        self.pairs
            .iter()
            .find(|(p, _)| mode == p.alone || mode == p.offload)
            .or(self.pairs.first())
            .map(|(_, lab)| lab)
            .expect("a bench has a lab")
    }

    /// A lab of this bench runs `mode`'s pair.
    fn has(&self, mode: Mode) -> bool {
        self.pairs
            .iter()
            .any(|(p, _)| mode == p.alone || mode == p.offload)
    }

    fn names(&self) -> String {
        self.pairs
            .iter()
            .map(|(p, lab)| format!("{} ({})", lab.name(), p.server))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The labs `--server` asks for, each up and running its server.
fn bench_labs(a: &BenchArgs) -> Result<BenchLabs> {
    let wanted: Vec<(Pair, &str)> = match (a.server, &a.pion_lab) {
        (ServerChoice::Coturn, None) => vec![(PAIRS[0], a.lab.as_str())],
        (ServerChoice::Pion, None) => vec![(PAIRS[1], a.lab.as_str())],
        (ServerChoice::Both, Some(pion)) => vec![(PAIRS[0], a.lab.as_str()), (PAIRS[1], pion)],
        (ServerChoice::Both, None) => {
            bail!("--server both needs --pion-lab (the lab running pion)")
        }
        (_, Some(_)) => bail!("--pion-lab is for --server both"),
    };
    if a.server != ServerChoice::Coturn && a.load.family == load::Family::V6 {
        bail!("pion/turn v2 relays from IPv4 addresses only: --family 6 is for --server coturn");
    }
    let mut pairs = Vec::new();
    for (pair, name) in wanted {
        let lab = Lab::existing(name)?;
        let want = pair.alone.server().expect("a pair names its server");
        if lab.server() != want {
            bail!(
                "lab {name} runs {}, not {} (TURN_SERVER={} LAB={name} scripts/lab.sh up)",
                lab.server().script_name(),
                want.script_name(),
                want.script_name()
            );
        }
        if lab.turnserver_pid().is_none() {
            bail!("{} is not running in lab {name}", want.script_name());
        }
        pairs.push((pair, lab));
    }
    Ok(BenchLabs { pairs })
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    need_root()?;
    let t0 = Instant::now();
    let labs = bench_labs(&a)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let loads: Vec<u64> = if !a.loads.is_empty() {
        a.loads.clone()
    } else if a.quick {
        vec![20_000, 60_000, 200_000]
    } else {
        vec![
            5_000, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000, 150_000,
            200_000, 300_000,
        ]
    };
    let duration = Duration::from_secs_f64(a.duration.unwrap_or(if a.quick { 2.0 } else { 6.0 }));
    let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 2 }).max(1);
    let quiet = Duration::from_secs_f64(a.quiet_wait.unwrap_or(if a.quick { 2.0 } else { 4.0 }));
    let mut modes = Vec::new();
    for (pair, _) in &labs.pairs {
        modes.extend([pair.alone, pair.offload]);
    }
    if !a.no_floor {
        modes.push(Mode::Forwarder);
    }
    let mut targets: Vec<Option<u64>> = loads.iter().map(|&l| Some(l)).collect();
    targets.push(None);

    let info = machine_info(a.server != ServerChoice::Coturn);
    println!(
        "turn-load bench: {} × {}, Linux {}, coturn {}{}; lab {}; {} loads + flat out × {} modes \
         × {} round(s), {:.0} s each",
        info.nproc,
        info.cpu_model,
        info.kernel,
        info.coturn_version,
        info.pion_version
            .as_deref()
            .map_or(String::new(), |v| format!(", {v}")),
        labs.names(),
        loads.len(),
        modes.len(),
        rounds,
        duration.as_secs_f64()
    );
    let mut points: Vec<Point> = Vec::new();
    let mut step = 0usize;
    for round in 0..rounds {
        let order: Vec<Option<u64>> = if round % 2 == 0 {
            targets.clone()
        } else {
            targets.iter().rev().copied().collect()
        };
        for t in order {
            // Rotate the modes at every load so drift hits them all alike.
            let mut ms = modes.clone();
            ms.rotate_left(step % modes.len());
            step += 1;
            for mode in ms {
                let (r, counters, other) =
                    measure(labs.of(mode), mode, t, duration, quiet, &a.load)
                        .with_context(|| format!("{} at {}", mode.name(), label(t)))?;
                let offloaded_pct = counters.as_ref().map(|c| {
                    let xdp = c.get("RELAYED_TO_PEER").copied().unwrap_or(0)
                        + c.get("RELAYED_TO_CLIENT").copied().unwrap_or(0);
                    100.0 * xdp as f64 / (r.c2p.sent + r.p2c.sent).max(1) as f64
                });
                println!(
                    "  [{:>5.0} s] round {} {:>9} {:<12} offered {:>8.0}  delivered {:>8.0} rt/s  \
                     loss {:>7.3}%  cpu {:>6.0} ns/pkt  server {:>5.1}%  rtt p50 {:>7.0} p99 {:>7.0} \
                     µs{}",
                    t0.elapsed().as_secs_f64(),
                    round + 1,
                    label(t),
                    mode.name(),
                    r.c2p.offered_pps,
                    r.round_trip.delivered_pps,
                    r.round_trip.loss_pct,
                    r.cpu_ns_per_relayed,
                    r.coturn_cpu_pct.unwrap_or(f64::NAN),
                    r.rtt.p50_us,
                    r.rtt.p99_us,
                    offloaded_pct.map_or(String::new(), |p| format!("  xdp {p:.1}%")),
                );
                points.push(Point {
                    mode,
                    round,
                    target_pps: t,
                    other_before_pct: other,
                    report: r,
                    agent: counters,
                    offloaded_pct,
                });
            }
        }
    }
    write_json(&a.out.join("runs.json"), &points)?;

    // Test runs per case and trials: given, or the full defaults, or a quarter of the runs and
    // fewer trials with --quick.
    let runs_trials =
        |runs: Option<u32>, trials: Option<usize>, full: (u32, usize), quick_trials| {
            if a.quick {
                (runs.unwrap_or(full.0 / 4), trials.unwrap_or(quick_trials))
            } else {
                (runs.unwrap_or(full.0), trials.unwrap_or(full.1))
            }
        };
    let (micro_runs, micro_trials) =
        runs_trials(a.micro_runs, a.micro_trials, (MICRO_RUNS, MICRO_TRIALS), 11);
    println!(
        "  micro-benchmark (BPF_PROG_TEST_RUN, {micro_runs} runs per case, {micro_trials} trials) ..."
    );
    let micro = baseline::run_micro(&a.micro_ns, micro_runs, micro_trials, a.binding_counters)?;
    let (scale_runs, scale_trials) =
        runs_trials(a.scale_runs, a.scale_trials, (SCALE_RUNS, SCALE_TRIALS), 5);
    println!(
        "  scale (channels {:?}, and under churn; {scale_runs} runs per case, {scale_trials} trials) ...",
        scale::LEVELS
    );
    let scale = scale::run_scale(
        &a.scale_ns,
        &scale::LEVELS,
        scale_runs,
        scale_trials,
        true,
        false,
    )?;

    let mut scale = scale;
    let sweep_repeats = if a.quick { 3 } else { 5 };
    println!("  the agent's upkeep ({SWEEP_SIZES:?} allocations, {sweep_repeats} repeats) ...");
    scale.sweep = turn_bpf_testkit::sweep_cost::measure(
        &SWEEP_SIZES,
        sweep_repeats,
        &format!("{}-sw", a.scale_ns),
    )?;
    scale.sweep_cpu_ms_per_s = scale.sweep.last().map(|c| c.cpu_ms_per_s);
    if labs.has(Mode::Offload) {
        // Many allocations through coturn, alone and with the agent: the headline's figures
        // beyond 16 allocations, and the burst of them allocating at once (LEARN_NO_PENDING).
        // Each run once the server has closed every relay socket of the runs before: an agent
        // started while coturn still closes the 10,000 of a run just ended hears those closes,
        // coturn's port ring hands the same ports out again within seconds, and the agent
        // leaves an allocation on a port closed in the last 10 s to the server (README, "A
        // relay port handed out again within 10 s of its close"): the figure would measure the
        // release, not the many allocations. (The agent's run first as well.)
        let e2e_load = LoadArgs {
            allocations: SCALE_E2E_ALLOCATIONS,
            ..a.load.clone()
        };
        for mode in [Mode::Offload, Mode::Coturn] {
            let left = relays_released(labs.of(mode), Duration::from_secs(15))?;
            if left > 0 {
                println!("  ({left} relay sockets still open at the server after 15 s)");
            }
            println!(
                "  scale e2e: {} with {SCALE_E2E_ALLOCATIONS} allocations at {SCALE_E2E_PPS} pps ...",
                mode.name()
            );
            let (r, counters, _) = measure(
                labs.of(mode),
                mode,
                Some(SCALE_E2E_PPS),
                duration,
                quiet,
                &e2e_load,
            )
            .with_context(|| format!("scale e2e, {}", mode.name()))?;
            let counter = |k: &str| counters.as_ref().map(|c| c.get(k).copied().unwrap_or(0));
            let offloaded_pct = counters.as_ref().map(|_| {
                let xdp = counter("RELAYED_TO_PEER").unwrap_or(0)
                    + counter("RELAYED_TO_CLIENT").unwrap_or(0);
                100.0 * xdp as f64 / (r.c2p.sent + r.p2c.sent).max(1) as f64
            });
            scale.e2e.insert(
                mode.name().to_string(),
                scale::ScaleE2e {
                    allocations: SCALE_E2E_ALLOCATIONS,
                    offered_pps: r.c2p.offered_pps,
                    delivered_pps: r.round_trip.delivered_pps,
                    loss_pct: r.round_trip.loss_pct,
                    cpu_ns_per_relayed: r.cpu_ns_per_relayed,
                    server_cpu_pct: r.coturn_cpu_pct,
                    offloaded_pct,
                    learn_no_pending: counter("LEARN_NO_PENDING"),
                    learned_allocations: counter("LEARN_ALLOC"),
                },
            );
        }
        scale.burst_unmatched = scale
            .e2e
            .get(Mode::Offload.name())
            .and_then(|e| e.learn_no_pending);
    }
    scale.goals = scale::scale_goals(&scale);

    let config = BenchConfig {
        quick: a.quick,
        family: a.load.family,
        duration_s: duration.as_secs_f64(),
        rounds,
        loads,
        allocations: a.load.allocations,
        payload_len: a.load.payload,
        batch: a.load.batch,
        moderation_us: a.load.moderation_us,
        micro_runs,
    };
    let mut summary = build_summary(&points, info, config, micro, t0.elapsed().as_secs_f64());
    summary.scale = Some(scale);
    let md = write_outputs(&summary, &a.out)?;
    println!();
    print!("{md}");
    println!(
        "\nwrote {}/summary.json, summary.md, chart.svg, runs.json in {:.0} s",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn build_summary(
    points: &[Point],
    machine: MachineInfo,
    config: BenchConfig,
    micro: MicroReport,
    elapsed_s: f64,
) -> Summary {
    let mut modes: Vec<Mode> = points.iter().map(|p| p.mode).collect();
    modes.sort();
    modes.dedup();
    let per_mode: BTreeMap<Mode, Vec<PointSummary>> = modes
        .iter()
        .map(|&m| (m, summarize_points(points, m)))
        .collect();
    // Each pair's figures at its own server's common load; the floor at the first pair's.
    let commons: Vec<(Pair, Option<u64>)> = PAIRS
        .iter()
        .filter_map(|&pair| Some((pair, common_load(per_mode.get(&pair.alone)?))))
        .collect();
    let first = commons.first().and_then(|&(_, c)| c);
    let summaries: BTreeMap<String, ModeSummary> = per_mode
        .into_iter()
        .map(|(m, ps)| {
            let common = commons
                .iter()
                .find(|(pair, _)| m == pair.alone || m == pair.offload)
                .map_or(first, |&(_, c)| c);
            let mut ms = mode_summary(ps, common);
            ms.flat_out_by_round = flat_out_by_round(points, m);
            (m.name().to_string(), ms)
        })
        .collect();
    Summary {
        machine,
        config,
        common_load_pps: first.unwrap_or(0),
        ratios: ratios(&summaries, &micro),
        goals: goals(&summaries, &micro),
        modes: summaries,
        micro,
        scale: None,
        elapsed_s,
    }
}

/// Writes summary.json, summary.md and chart.svg; returns the Markdown.
fn write_outputs(summary: &Summary, out: &Path) -> Result<String> {
    write_json(&out.join("summary.json"), summary)?;
    let md = render_markdown(summary);
    std::fs::write(out.join("summary.md"), &md)
        .with_context(|| format!("writing {}/summary.md", out.display()))?;
    chart(summary, &out.join("chart.svg"))?;
    Ok(md)
}

fn cmd_render(a: RenderArgs) -> Result<()> {
    let read = |name: &str| -> Result<String> {
        let p = a.out.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    /// What render takes over from an earlier summary.json (the rest is recomputed).
    #[derive(Deserialize)]
    struct Head {
        machine: MachineInfo,
        config: BenchConfig,
        micro: MicroReport,
        #[serde(default)]
        scale: Option<ScaleReport>,
        elapsed_s: f64,
    }
    let points: Vec<Point> = serde_json::from_str(&read("runs.json")?).context("runs.json")?;
    let old: Head = serde_json::from_str(&read("summary.json")?).context("summary.json")?;
    let mut summary = build_summary(&points, old.machine, old.config, old.micro, old.elapsed_s);
    summary.scale = old.scale.map(|mut sc| {
        // a summary written before burst_unmatched was kept: from the e2e run it kept
        if sc.burst_unmatched.is_none() {
            sc.burst_unmatched = sc
                .e2e
                .get(Mode::Offload.name())
                .and_then(|e| e.learn_no_pending);
        }
        sc.goals = scale::scale_goals(&sc);
        sc
    });
    print!("{}", write_outputs(&summary, &a.out)?);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Rendering
// ------------------------------------------------------------------------------------------

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let r = v.round() as i64;
    let s = r.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    if r < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn fmt_f(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "–".into()
    }
}

fn render_micro(m: &MicroReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| case | ns per packet | ratio (p10–p90) | net of floor | vs | program, verdict |\n\
         |---|---:|---:|---:|---|---|"
    );
    for c in &m.cases {
        let ratio = match (c.ratio, c.ratio_p10, c.ratio_p90) {
            (Some(r), Some(lo), Some(hi)) => {
                format!("{} ({}–{})", fmt_f(r, 2), fmt_f(lo, 2), fmt_f(hi, 2))
            }
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "| {} — {} | {} | {} | {} | {} | {}, {} |",
            c.name,
            c.what,
            fmt_f(c.ns, 1),
            ratio,
            c.net_ratio.map_or(String::new(), |r| fmt_f(r, 2)),
            c.vs.as_deref().unwrap_or(""),
            c.program,
            c.verdict
        );
    }
    for p in &m.pending {
        let _ = writeln!(
            s,
            "| {} — {} | pending: {} | | | | |",
            p.name, p.what, p.why
        );
    }
    let _ = writeln!(
        s,
        "\nEach figure is the program's own time per run as the kernel accounts it \
         (`run_time_ns / run_cnt` of bpf_prog_info, run-time statistics on through \
         BPF_ENABLE_STATS), median of {} trials of {} test runs per case, one run per test run so \
         every run starts from the original frame; every trial runs every case once, in an order \
         rotated per trial. Nothing is subtracted: stats_floor is what the accounting's own clock \
         reads add to every figure (\"net of floor\" is the median per-trial ratio with it taken off \
         both sides, a derived figure). A ratio is the median of the path's per-trial ratios to the \
         baseline forwarder of its OUTPUT family (column vs) in the same trial, with the 10th–90th \
         percentiles of those ratios. Every run's verdict is checked, and that the path's counter \
         moved by exactly the number of runs. A tail-called program's time {} accounted to it on \
         this kernel, which is why no harness is in front of the programs.",
        m.trials,
        m.runs,
        if m.tail_call_accounted { "is" } else { "is NOT" }
    );
    let _ = writeln!(s, "\nKeys:");
    for (k, v) in &m.figures {
        let _ = writeln!(s, "    {k} = {}", fmt_f(*v, 3));
    }
    s
}

/// The scale table: every level and the churn case side by side with their ratios to the cost
/// at 1 channel, the memory, and the goals.
fn render_scale(r: &ScaleReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| live channels | ns per packet (p10–p90) | × the cost at 1 (p10–p90) | hash floor ns \
         (× its cost at 1) | slot floor ns (× its cost at 1) | fast path above the hash floor, ns \
         | test-run ns per run |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    let mut levels: Vec<(u32, &String)> = r
        .ns_per_pkt
        .keys()
        .filter_map(|k| Some((k.parse().ok()?, k)))
        .collect();
    levels.sort();
    let at = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let floor = |fl: &BTreeMap<String, scale::FloorFigures>,
                 name: &str,
                 fig: fn(&scale::FloorFigures) -> &BTreeMap<String, f64>,
                 k: &str| fl.get(name).map_or(f64::NAN, |f| at(fig(f), k));
    for (n, k) in levels {
        let _ = writeln!(
            s,
            "| {} | {} ({}–{}) | {} ({}–{}) | {} ({}) | {} ({}) | {} | {} |",
            fmt_num(f64::from(n)),
            fmt_f(at(&r.ns_per_pkt, k), 1),
            fmt_f(at(&r.ns_per_pkt_p10, k), 1),
            fmt_f(at(&r.ns_per_pkt_p90, k), 1),
            fmt_f(at(&r.ratio_to_1, k), 3),
            fmt_f(at(&r.ratio_to_1_p10, k), 3),
            fmt_f(at(&r.ratio_to_1_p90, k), 3),
            fmt_f(floor(&r.floors, "hash", |f| &f.ns_per_pkt, k), 1),
            fmt_f(floor(&r.floors, "hash", |f| &f.ratio_to_1, k), 3),
            fmt_f(floor(&r.floors, "slots", |f| &f.ns_per_pkt, k), 1),
            fmt_f(floor(&r.floors, "slots", |f| &f.ratio_to_1, k), 3),
            fmt_f(floor(&r.floors, "hash", |f| &f.fast_path_above_ns, k), 1),
            fmt_f(at(&r.test_run_ns, k), 1),
        );
    }
    if !r.churn_ns_per_pkt.is_nan() {
        let _ = writeln!(
            s,
            "| {} + {:.0} grants/s on the other CPU | {} ({}–{}) | {} ({}–{}) | – | – | – | {} |",
            fmt_num(f64::from(r.churn_channels)),
            r.churn_grants_per_s,
            fmt_f(r.churn_ns_per_pkt, 1),
            fmt_f(r.churn_ns_per_pkt_p10, 1),
            fmt_f(r.churn_ns_per_pkt_p90, 1),
            fmt_f(r.churn_ratio_to_1, 3),
            fmt_f(r.churn_ratio_to_1_p10, 3),
            fmt_f(r.churn_ratio_to_1_p90, 3),
            fmt_f(r.churn_test_run_ns, 1),
        );
    }
    let d = &r.map_memory_default;
    let m = &r.map_memory_measured;
    let _ = writeln!(
        s,
        "\nPath {}: the program's own time (kernel accounting, `run_time_ns / run_cnt`), median of \
         {} trials of {} runs per case, each run a different channel's frame, every verdict \
         XDP_REDIRECT and RELAYED_TO_PEER moved once per run. The lookup floors look every \
         packet up by a 16-byte key (addresses, ports, channel) and then do the FIB lookup, the \
         rewrite and the redirect, holding the same bindings and timed on the same frames in the \
         same rotation: the hash floor (`xdp_lookup_fwd`) in a hash table as large as the fast \
         path's, the slot floor (`xdp_slot_fwd`) in an open-addressed array of 32-byte slots \
         (one memory access where a hash table takes two). What they pay as the table grows is \
         what any design of that shape pays here. Tables sized for the largest level \
         in every case ({}). Under churn: {:.2}× the quiet case at the same level; {} grants \
         ({}), {} of which voided every channel's validity cache and {} one shard's (1 in {} \
         allocations). Fill of {} channels through the snooper: {:.1} s.\n\n\
         State tables at the default sizes ({} allocations, {} channels, {} permissions, {} \
         pending): **{}** by the kernel's memlock (map_memory_bytes = {}; estimate {}); at the \
         sizes measured: {} (estimate {}).",
        r.path,
        r.trials,
        r.runs,
        r.sizes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.churn_ratio_to_quiet,
        r.churn_grants,
        r.churn_grants_by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.churn_cache_voids,
        r.churn_shard_voids,
        turn_bpf::consts::TB_SHORTENED_SHARDS,
        fmt_num(f64::from(r.churn_channels)),
        r.fill_s,
        d.allocations,
        d.channels,
        d.permissions,
        d.pending,
        turn_bpf::sizing::human(d.memlock_bytes),
        d.memlock_bytes,
        turn_bpf::sizing::human(d.estimate_bytes),
        turn_bpf::sizing::human(m.memlock_bytes),
        turn_bpf::sizing::human(m.estimate_bytes),
    );
    if !r.sweep.is_empty() {
        let _ = write!(
            s,
            "\nThe agent's own upkeep (its sweep code on real maps with one channel and one \
             permission per allocation, and a real relay socket each; CPU ms, median (min–max)):\n\n{}",
            turn_bpf_testkit::sweep_cost::render(&r.sweep)
        );
    }
    let _ = writeln!(
        s,
        "\n| scale goal | target | measured | |\n|---|---|---|---|"
    );
    for g in &r.goals {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            g.goal,
            g.target,
            g.measured,
            if g.met { "**met**" } else { "**missed**" }
        );
    }
    if !r.e2e.is_empty() {
        let _ = writeln!(
            s,
            "\n| many allocations (load generator) | allocations | offered /s | delivered rt/s | \
             loss | CPU ns per relayed datagram | server CPU | in XDP | allocations learned | \
             answers unmatched |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (mode, e) in &r.e2e {
            let opt = |v: Option<u64>| v.map_or("–".to_string(), |v| v.to_string());
            let _ = writeln!(
                s,
                "| {mode} | {} | {:.0} | {:.0} | {:.3}% | {:.0} | {} | {} | {} | {} |",
                e.allocations,
                e.offered_pps,
                e.delivered_pps,
                e.loss_pct,
                e.cpu_ns_per_relayed,
                e.server_cpu_pct
                    .map_or("–".to_string(), |v| format!("{v:.1}%")),
                e.offloaded_pct
                    .map_or("–".to_string(), |v| format!("{v:.1}%")),
                opt(e.learned_allocations),
                opt(e.learn_no_pending),
            );
        }
    }
    s
}

/// One pair's headline table and its notes.
fn headline(o: &mut String, s: &Summary, pair: Pair) {
    let (an, on, server) = (pair.alone.name(), pair.offload.name(), pair.server);
    let c = s.modes.get(an);
    let of = s.modes.get(on);
    let f = s.modes.get("forwarder");
    let common = c
        .and_then(|c| c.common_load_pps)
        .unwrap_or(s.common_load_pps);
    // The floor's figures at this pair's common load, its maxima over the sweep.
    let f = f.map(|f| {
        let at = f.points.iter().find(|p| p.target_pps == Some(common));
        let g = |h: &dyn Fn(&PointSummary) -> f64| at.map_or(f64::NAN, h);
        ModeSummary {
            cpu_ns_per_pkt: g(&|p| p.cpu_ns_per_pkt),
            machine_ns_per_pkt: g(&|p| p.machine_ns_per_pkt),
            coturn_cpu_pct: g(&|p| p.coturn_cpu_pct),
            loss_pct: g(&|p| p.loss_pct),
            rtt_p50_us: g(&|p| p.rtt_p50_us),
            rtt_p99_us: g(&|p| p.rtt_p99_us),
            rtt_p999_us: g(&|p| p.rtt_p999_us),
            common_load_pps: Some(common),
            ..f.clone()
        }
    });
    let f = f.as_ref();
    let col =
        |ms: Option<&ModeSummary>, g: &dyn Fn(&ModeSummary) -> String| ms.map_or("–".into(), g);
    let _ = writeln!(
        o,
        "## {}\n\nAt the common offered load of **{} datagrams/s** client→peer (the highest \
         at which {server} alone lost < 0.1%); maxima over the whole sweep.\n",
        if pair.alone == Mode::Coturn {
            "Headline".to_string()
        } else {
            format!("Headline: {server}")
        },
        fmt_num(common as f64)
    );
    let _ = writeln!(
        o,
        "| | {an} | {on} | {an} ÷ {on} | floor (baseline XDP forwarder, no TURN) |\n\
         |---|---:|---:|---:|---:|"
    );
    let server_cpu = format!("{server} CPU (% of one CPU)");
    type Row<'a> = (&'a str, &'a dyn Fn(&ModeSummary) -> f64, bool, usize);
    let rows: [Row; 8] = [
        (
            "max delivered (round trips/s)",
            &|x| x.max_delivered_pps,
            false,
            0,
        ),
        (
            "max relayed (datagrams/s)",
            &|x| x.max_relayed_pps,
            false,
            0,
        ),
        (
            "CPU per relayed datagram (ns)",
            &|x| x.cpu_ns_per_pkt,
            true,
            0,
        ),
        (
            "  whole machine incl. other users (ns)",
            &|x| x.machine_ns_per_pkt,
            true,
            0,
        ),
        (server_cpu.as_str(), &|x| x.coturn_cpu_pct, true, 2),
        ("round-trip loss (%)", &|x| x.loss_pct, true, 3),
        ("RTT p50 (µs)", &|x| x.rtt_p50_us, true, 0),
        ("RTT p99 (µs)", &|x| x.rtt_p99_us, true, 0),
    ];
    for (name, g, lower_better, prec) in rows {
        let ratio = match (c, of) {
            (Some(c), Some(of)) => {
                let r = if lower_better {
                    g(c) / g(of)
                } else {
                    g(of) / g(c)
                };
                if name == server_cpu || name.starts_with("round-trip loss") {
                    "–".to_string()
                } else if lower_better {
                    format!("{}×", fmt_f(r, 1))
                } else {
                    format!("{}× more", fmt_f(r, 1))
                }
            }
            _ => "–".into(),
        };
        let v = |x: &ModeSummary| {
            if prec == 0 {
                fmt_num(g(x))
            } else {
                fmt_f(g(x), prec)
            }
        };
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {ratio} | {} |",
            col(c, &v),
            col(of, &v),
            col(f, &v)
        );
    }
    let _ = writeln!(
        o,
        "\nCPU per relayed datagram: the CPU time of every task of the run (the generator's client \
         and echo, {server}, the agent, kernel threads, each with the kernel work it causes, \
         softirqs included) over the datagrams relayed in both directions. The whole-machine row \
         also counts other users of this shared machine ({}% of it on average during the runs at \
         the common load).",
        fmt_f(
            mean(
                s.modes
                    .values()
                    .filter_map(|m| m.points.iter().find(|p| p.target_pps == Some(common)))
                    .map(|p| p.other_pct)
            ),
            0
        )
    );
    if let (Some(rc), Some(ro), Some(f)) = (
        s.ratios.get(&format!("relay_cpu_above_floor_{an}_ns")),
        s.ratios.get(&format!("relay_cpu_above_floor_{on}_ns")),
        f,
    ) {
        let off = if *ro > 0.05 * f.cpu_ns_per_pkt {
            format!("{} ns", fmt_num(*ro))
        } else {
            format!(
                "{} ns, i.e. none measurable (within ±5% of the floor)",
                fmt_num(*ro)
            )
        };
        let _ = writeln!(
            o,
            "\nThe floor is what any path costs in this lab: the client's and the peer's own UDP \
             stacks and the generator, all on this machine, plus plain XDP forwarding. What the \
             relay itself adds above it, per relayed datagram: {server} {} ns, {on} {off}.",
            fmt_num(*rc),
        );
    }
}

fn render_markdown(s: &Summary) -> String {
    let mut o = String::new();
    let m = &s.machine;
    let _ = writeln!(
        o,
        "# turn-bpf benchmark{}\n",
        if s.config.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        o,
        "Machine: {} × {}, Linux {}, coturn {}{}. IPv{} load: {} allocations, {}-byte payloads, \
         {} s per point, {} round(s), modes alternated at every load. {:.0} s in all.\n",
        m.nproc,
        m.cpu_model,
        m.kernel,
        m.coturn_version,
        m.pion_version
            .as_deref()
            .map_or(String::new(), |v| format!(", {v}")),
        s.config.family,
        s.config.allocations,
        s.config.payload_len,
        s.config.duration_s,
        s.config.rounds,
        s.elapsed_s
    );
    let mut first = true;
    for pair in PAIRS {
        if s.modes.contains_key(pair.alone.name()) || s.modes.contains_key(pair.offload.name()) {
            if !first {
                o.push('\n');
            }
            first = false;
            headline(&mut o, s, pair);
        }
    }
    let pion = s.modes.contains_key("pion") || s.modes.contains_key("pion_offload");

    let _ = writeln!(o, "\n## Sweep\n");
    let _ = writeln!(
        o,
        "| offered (target) | mode | offered/s | delivered c→p/s | delivered p→c/s | round-trip loss % \
         | CPU ns/pkt | {} CPU % | RTT p50 µs | RTT p99 µs | RTT p99.9 µs | other users % |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        if pion { "server" } else { "coturn" }
    );
    let mut labels: Vec<(Option<u64>, String)> = s
        .modes
        .values()
        .flat_map(|ms| ms.points.iter().map(|p| (p.target_pps, p.label.clone())))
        .collect();
    labels.sort_by_key(|(t, _)| t.unwrap_or(u64::MAX));
    labels.dedup();
    for (t, lab) in labels {
        for name in ["coturn", "offload", "pion", "pion_offload", "forwarder"] {
            let Some(p) = s
                .modes
                .get(name)
                .and_then(|ms| ms.points.iter().find(|p| p.target_pps == t))
            else {
                continue;
            };
            let _ = writeln!(
                o,
                "| {lab} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt_num(p.offered_pps),
                fmt_num(p.c2p_delivered_pps),
                fmt_num(p.p2c_delivered_pps),
                fmt_f(p.loss_pct, 3),
                fmt_num(p.cpu_ns_per_pkt),
                fmt_f(p.coturn_cpu_pct, 1),
                fmt_num(p.rtt_p50_us),
                fmt_num(p.rtt_p99_us),
                fmt_num(p.rtt_p999_us),
                fmt_f(p.other_pct, 1),
            );
        }
    }
    let _ = writeln!(
        o,
        "\n## Micro-benchmark (BPF_PROG_TEST_RUN through the loaded programs)\n"
    );
    o.push_str(&render_micro(&s.micro));
    if let Some(sc) = &s.scale {
        let _ = writeln!(o, "\n## Scale (live channels, churn, table memory)\n");
        o.push_str(&render_scale(sc));
    }
    let _ = writeln!(o, "\n## Ratios\n\n| ratio | value |\n|---|---:|");
    for (k, v) in &s.ratios {
        let _ = writeln!(o, "| {k} | {} |", fmt_f(*v, 2));
    }
    let _ = writeln!(
        o,
        "\n## Goals\n\n| goal | target | measured | |\n|---|---|---|---|"
    );
    for g in &s.goals {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            g.goal,
            g.target,
            g.measured,
            if g.met { "**met**" } else { "**missed**" }
        );
    }
    o
}

fn chart(s: &Summary, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = root
        .titled(
            if s.modes.contains_key("pion") && s.modes.contains_key("coturn") {
                "turn-bpf: coturn and pion alone vs. offloaded vs. the floor (plain XDP forwarding)"
            } else if s.modes.contains_key("pion") {
                "turn-bpf: pion alone vs. offloaded vs. the floor (plain XDP forwarding)"
            } else {
                "turn-bpf: coturn alone vs. offloaded vs. the floor (plain XDP forwarding)"
            },
            ("sans-serif", 20),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = root.split_evenly((1, 2));
    let colors = [
        ("coturn", RGBColor(200, 60, 40)),
        ("offload", RGBColor(30, 100, 200)),
        ("pion", RGBColor(230, 150, 20)),
        ("pion_offload", RGBColor(40, 160, 90)),
        ("forwarder", RGBColor(120, 120, 120)),
    ];
    let series = |name: &str, g: &dyn Fn(&PointSummary) -> f64| -> Vec<(f64, f64)> {
        s.modes.get(name).map_or(Vec::new(), |m| {
            let mut v: Vec<(f64, f64)> = m
                .points
                .iter()
                .map(|p| (p.offered_pps, g(p)))
                .filter(|(x, y)| x.is_finite() && y.is_finite() && *x > 0.0 && *y > 0.0)
                .collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        })
    };
    let all_x: Vec<f64> = colors
        .iter()
        .flat_map(|(n, _)| series(n, &|p| p.delivered_pps))
        .map(|(x, _)| x)
        .collect();
    let xmin = all_x.iter().copied().fold(f64::INFINITY, f64::min).max(1.0) * 0.8;
    let xmax = all_x.iter().copied().fold(0.0, f64::max).max(xmin * 2.0) * 1.25;
    // 1-2-5 key points on the log axes.
    let keys = |lo: f64, hi: f64| -> Vec<f64> {
        let mut v = Vec::new();
        let mut decade = 1.0;
        while decade <= hi {
            for m in [1.0, 2.0, 5.0] {
                let k = m * decade;
                if k >= lo && k <= hi {
                    v.push(k);
                }
            }
            decade *= 10.0;
        }
        v
    };

    // Left: delivered round trips per second.
    let ymax_d = colors
        .iter()
        .flat_map(|(n, _)| series(n, &|p| p.delivered_pps))
        .map(|(_, y)| y)
        .fold(1.0, f64::max)
        * 1.5;
    let mut ch = ChartBuilder::on(&panels[0])
        .margin(15)
        .caption("delivered round trips/s vs offered", ("sans-serif", 16))
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (xmin..xmax).log_scale().with_key_points(keys(xmin, xmax)),
            (xmin * 0.5..ymax_d)
                .log_scale()
                .with_key_points(keys(xmin * 0.5, ymax_d)),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ch.configure_mesh()
        .x_desc("offered client→peer datagrams/s")
        .y_desc("delivered round trips/s")
        .x_label_formatter(&|x| fmt_num(*x))
        .y_label_formatter(&|y| fmt_num(*y))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, color) in colors {
        let pts = series(name, &|p| p.delivered_pps);
        if pts.is_empty() {
            continue;
        }
        ch.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        ch.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    ch.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // Right: CPU per relayed datagram.
    let ymax_c = colors
        .iter()
        .flat_map(|(n, _)| series(n, &|p| p.cpu_ns_per_pkt))
        .map(|(_, y)| y)
        .fold(1.0, f64::max)
        * 1.15;
    let mut ch = ChartBuilder::on(&panels[1])
        .margin(15)
        .caption("CPU per relayed datagram vs offered", ("sans-serif", 16))
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (xmin..xmax).log_scale().with_key_points(keys(xmin, xmax)),
            0.0..ymax_c,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ch.configure_mesh()
        .x_desc("offered client→peer datagrams/s")
        .y_desc("ns of CPU per relayed datagram")
        .x_label_formatter(&|x| fmt_num(*x))
        .y_label_formatter(&|y| fmt_num(*y))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, color) in colors {
        let pts = series(name, &|p| p.cpu_ns_per_pkt);
        if pts.is_empty() {
            continue;
        }
        ch.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        ch.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    ch.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ps(target: Option<u64>, loss: f64, delivered: f64) -> PointSummary {
        PointSummary {
            target_pps: target,
            label: label(target),
            offered_pps: target.map_or(1e6, |t| t as f64),
            c2p_delivered_pps: delivered,
            p2c_delivered_pps: delivered,
            delivered_pps: delivered,
            relayed_pps: 2.0 * delivered,
            loss_pct: loss,
            cpu_ns_per_pkt: 1000.0,
            machine_ns_per_pkt: 1100.0,
            coturn_cpu_pct: 50.0,
            rtt_p50_us: 100.0,
            rtt_p99_us: 200.0,
            rtt_p999_us: 300.0,
            other_pct: 0.0,
            offloaded_pct: None,
            rounds: 1,
        }
    }

    #[test]
    fn the_common_load_is_the_highest_without_loss() {
        let c = vec![
            ps(Some(10_000), 0.0, 1e4),
            ps(Some(20_000), 0.05, 2e4),
            ps(Some(40_000), 3.0, 3e4),
            ps(None, 80.0, 3e4),
        ];
        assert_eq!(common_load(&c), Some(20_000));
        // Loss everywhere: the lowest load.
        let c = vec![ps(Some(20_000), 1.0, 1e4), ps(Some(10_000), 0.5, 1e4)];
        assert_eq!(common_load(&c), Some(10_000));
        assert_eq!(common_load(&[ps(None, 0.0, 1.0)]), None);
    }

    #[test]
    fn mode_summary_takes_maxima_and_the_common_point() {
        let m = mode_summary(
            vec![ps(Some(10_000), 0.0, 1e4), ps(None, 10.0, 5e4)],
            Some(10_000),
        );
        assert_eq!(m.max_delivered_pps, 5e4);
        assert_eq!(m.max_delivered_at, "flat out");
        assert_eq!(m.loss_pct, 0.0);
        assert_eq!(m.max_relayed_pps, 1e5);
    }

    fn summary_of(modes: &[(Mode, f64)], common: Option<u64>) -> BTreeMap<String, ModeSummary> {
        modes
            .iter()
            .map(|&(m, cpu)| {
                let mut points = vec![ps(Some(10_000), 0.0, 1e4), ps(None, 10.0, 5e4)];
                for p in &mut points {
                    p.cpu_ns_per_pkt = cpu;
                }
                (m.name().to_string(), mode_summary(points, common))
            })
            .collect()
    }

    fn empty_micro() -> MicroReport {
        MicroReport {
            runs: 0,
            trials: 0,
            tail_call_accounted: true,
            binding_counters: false,
            figures: BTreeMap::new(),
            cases: Vec::new(),
            pending: Vec::new(),
        }
    }

    #[test]
    fn mode_names_are_the_summary_keys() {
        for (m, name) in [
            (Mode::Coturn, "coturn"),
            (Mode::Offload, "offload"),
            (Mode::Forwarder, "forwarder"),
            (Mode::Pion, "pion"),
            (Mode::PionOffload, "pion_offload"),
        ] {
            assert_eq!(m.name(), name);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{name}\""));
        }
    }

    #[test]
    fn coturn_alone_keeps_its_keys_and_pion_gets_its_own() {
        let micro = empty_micro();
        let coturn = summary_of(
            &[
                (Mode::Coturn, 5000.0),
                (Mode::Offload, 1000.0),
                (Mode::Forwarder, 800.0),
            ],
            Some(10_000),
        );
        let r = ratios(&coturn, &micro);
        assert_eq!(r["cpu_per_pkt_coturn_over_offload"], 5.0);
        assert_eq!(r["relay_cpu_above_floor_coturn_ns"], 4200.0);
        assert_eq!(r["relay_cpu_above_floor_offload_ns"], 200.0);
        assert_eq!(r["offload_cpu_over_floor"], 1.25);
        assert!(r.keys().all(|k| !k.contains("pion")), "{r:?}");
        let g = goals(&coturn, &micro);
        assert_eq!(g.len(), 7);
        assert!(g[0].goal.starts_with("CPU per relayed datagram"), "{g:?}");
        assert!(g[3].goal.starts_with("coturn's own CPU"), "{g:?}");

        let both = summary_of(
            &[
                (Mode::Coturn, 5000.0),
                (Mode::Offload, 1000.0),
                (Mode::Forwarder, 800.0),
                (Mode::Pion, 8000.0),
                (Mode::PionOffload, 1600.0),
            ],
            Some(10_000),
        );
        let r = ratios(&both, &micro);
        assert_eq!(r["cpu_per_pkt_coturn_over_offload"], 5.0);
        assert_eq!(r["cpu_per_pkt_pion_over_pion_offload"], 5.0);
        assert_eq!(r["relay_cpu_above_floor_pion_ns"], 7200.0);
        assert_eq!(r["pion_offload_cpu_over_floor"], 2.0);
        let g = goals(&both, &micro);
        assert_eq!(g.len(), 12);
        let pion: Vec<&Goal> = g.iter().filter(|g| g.goal.starts_with("pion: ")).collect();
        assert_eq!(pion.len(), 5, "{g:?}");
        assert!(pion.iter().any(|g| g.goal.contains("pion's own CPU")));
        assert!(pion.iter().all(|g| !g.goal.contains("coturn")), "{pion:?}");
    }

    #[test]
    fn relay_sockets_are_counted_by_their_local_port() {
        let ss = "UNCONN 0      0            192.0.2.1:3478 0.0.0.0:*\n\
                  UNCONN 0      0        198.51.100.1:49152 0.0.0.0:*\n\
                  UNCONN 0      0        198.51.100.1:65535 0.0.0.0:*\n\
                  ESTAB  0      0            192.0.2.1:3478 192.0.2.2:50000\n\
                  UNCONN 0      0   [2001:db8:2::1]:50001 [::]:*\n\
                  UNCONN 0      0        198.51.100.1:49151 0.0.0.0:*\n";
        assert_eq!(relay_sockets(ss), 3);
        assert_eq!(relay_sockets(""), 0);
    }

    /// The flat-out goal compares each round's offload with the floor's of the same round, and
    /// is judged on their median, with the spread printed.
    #[test]
    fn the_flat_out_goal_is_judged_round_by_round() {
        let micro = empty_micro();
        let mut m = summary_of(
            &[
                (Mode::Coturn, 5000.0),
                (Mode::Offload, 1000.0),
                (Mode::Forwarder, 800.0),
            ],
            Some(10_000),
        );
        let set = |m: &mut BTreeMap<String, ModeSummary>, mode: Mode, v: &[f64]| {
            m.get_mut(mode.name()).unwrap().flat_out_by_round =
                v.iter().copied().enumerate().collect();
        };
        set(&mut m, Mode::Forwarder, &[4e5, 5e5, 4e5]);
        set(&mut m, Mode::Offload, &[3.6e5, 5e5, 4.2e5]);
        let r = ratios(&m, &micro);
        assert_eq!(r["offload_flat_out_over_floor"], 1.0);
        assert_eq!(r["offload_flat_out_over_floor_min"], 0.9);
        assert_eq!(r["offload_flat_out_over_floor_max"], 1.05);
        let g = goals(&m, &micro);
        assert_eq!(g.len(), 8, "{g:?}");
        let flat = g.iter().find(|g| g.goal.starts_with("Flat-out")).unwrap();
        assert!(flat.met, "{flat:?}");
        assert!(
            flat.measured.starts_with("1.00× (median of 3 rounds"),
            "{flat:?}"
        );
        assert!(flat.measured.contains("0.90–1.05"), "{flat:?}");
        // a round's ratio is to the floor of the same round, not the best floor
        set(&mut m, Mode::Offload, &[3.6e5, 4.5e5, 3.6e5]);
        let flat = goals(&m, &micro)
            .into_iter()
            .find(|g| g.goal.starts_with("Flat-out"))
            .unwrap();
        assert!(!flat.met, "{flat:?}");
        assert!(flat.measured.starts_with("0.90×"), "{flat:?}");
        // rounds pair by number: a round the floor lacks is left out, not shifted
        m.get_mut("forwarder").unwrap().flat_out_by_round.remove(&0);
        let r = ratios(&m, &micro);
        assert_eq!(r["offload_flat_out_over_floor_min"], 0.9);
        assert_eq!(r["offload_flat_out_over_floor_max"], 0.9);
        // no floor measured: no goal
        set(&mut m, Mode::Forwarder, &[]);
        assert!(goals(&m, &micro)
            .iter()
            .all(|g| !g.goal.starts_with("Flat-out")));
        assert!(!ratios(&m, &micro).contains_key("offload_flat_out_over_floor"));
    }

    /// summary.json keeps every key it had, and the scale figures the issue asks for are under
    /// `scale`, keyed by live channels.
    #[test]
    fn summary_keys_and_the_scale_section() {
        let machine = MachineInfo {
            nproc: 2,
            cpu_model: "x".into(),
            kernel: "6.18".into(),
            coturn_version: "4.6.1".into(),
            pion_version: None,
        };
        let config = BenchConfig {
            quick: true,
            family: load::Family::default(),
            duration_s: 2.0,
            rounds: 1,
            loads: vec![20_000],
            allocations: 16,
            payload_len: 128,
            batch: 64,
            moderation_us: 0,
            micro_runs: 1,
        };
        let mut s = build_summary(&[], machine, config, empty_micro(), 1.0);
        let mut sc = ScaleReport::default();
        for n in scale::LEVELS {
            sc.ns_per_pkt.insert(n.to_string(), 400.0);
        }
        sc.churn_ns_per_pkt = 450.0;
        sc.map_memory_bytes = 92_674_352;
        s.scale = Some(sc);
        let v = serde_json::to_value(&s).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "machine",
            "config",
            "common_load_pps",
            "modes",
            "ratios",
            "micro",
            "goals",
            "elapsed_s",
            "scale",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        let sc = &v["scale"];
        for n in ["1", "1000", "100000"] {
            assert_eq!(sc["ns_per_pkt"][n], 400.0, "{sc}");
        }
        assert_eq!(sc["churn_ns_per_pkt"], 450.0);
        assert_eq!(sc["map_memory_bytes"], 92_674_352);
        // A summary written before the scale section existed still reads (render).
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("scale");
        let back: Summary = serde_json::from_value(old).unwrap();
        assert!(back.scale.is_none());
        // The printed table shows each level and the churn case with its ratio.
        let md = render_scale(s.scale.as_ref().unwrap());
        assert!(md.contains("| 100 000 | 400.0"), "{md}");
        assert!(md.contains("grants/s on the other CPU | 450.0"), "{md}");
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(fmt_num(1234567.4), "1 234 567");
        assert_eq!(fmt_num(999.0), "999");
        assert_eq!(fmt_num(-1000.0), "-1 000");
        assert_eq!(fmt_num(f64::NAN), "–");
        assert_eq!(label(Some(40_000)), "40k");
        assert_eq!(label(Some(12_345)), "12345");
        assert_eq!(label(None), "flat out");
    }
}
