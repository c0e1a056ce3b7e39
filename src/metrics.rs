//! `--prometheus ADDR:PORT`: the running agent's `/metrics` in the Prometheus text format
//! (version 0.0.4), served by a small blocking HTTP/1.0 server on a thread of its own.
//!
//! Every scrape reads the maps afresh ([`Snapshot`]); what only the run loop knows (the sweep's
//! duration and what it ended) comes from [`RunStats`], which the loop updates after each sweep.
//! The metric names are the README's table ("Watching it"); [`METRICS`] is that table.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use log::{debug, info, warn};

use crate::snapshot::{family_name, Snapshot, Sources};
use crate::stats::STATS;
use crate::sweep::SweepReport;

/// Largest request head read; a longer one is answered 431 and the connection closed.
const MAX_REQUEST: usize = 8192;
/// How long one connection may take, reading and writing together.
const CONN_DEADLINE: Duration = Duration::from_secs(5);

/// What a scrape knows besides the maps: the build and when the agent started.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub version: &'static str,
    /// The server profile in use (`coturn`, `pion`, `rfc8656`).
    pub server: String,
    pub start_time: SystemTime,
}

impl BuildInfo {
    /// This build, running with `server`'s profile, started now.
    pub fn now(server: crate::server_conf::profile::ServerKind) -> BuildInfo {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            server: format!("{server:?}").to_ascii_lowercase(),
            start_time: SystemTime::now(),
        }
    }
}

/// What the run loop counts as it sweeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunCounts {
    /// Bindings the sweep removed because they ended (expired, or ended at the server).
    pub allocations_ended: u64,
    pub channels_ended: u64,
    pub permissions_ended: u64,
    /// The last sweep's duration.
    pub sweep_seconds: f64,
    pub sweeps: u64,
}

/// [`RunCounts`], shared by the run loop and the exporter's thread.
#[derive(Debug, Default)]
pub struct RunStats(Mutex<RunCounts>);

impl RunStats {
    /// Count one sweep and what it ended.
    /// `took`: a full sweep and how long it took (None: the work between full sweeps).
    pub fn record(&self, r: &SweepReport, took: Option<Duration>) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        c.allocations_ended += r.allocs_removed as u64;
        c.channels_ended += r.gone.len() as u64;
        c.permissions_ended += r.perms_removed as u64;
        if let Some(took) = took {
            c.sweep_seconds = took.as_secs_f64();
            c.sweeps += 1;
        }
    }

    pub fn get(&self) -> RunCounts {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// `(name, type, help)` of every metric served, in the order served.
pub const METRICS: &[(&str, &str, &str)] = &[
    ("turnbpf_relayed_packets_total", "counter",
     "Datagrams relayed in XDP, by direction (to_peer, to_client, hairpin) and the family they came in and left with."),
    ("turnbpf_relayed_bytes_total", "counter",
     "Data bytes relayed in XDP (the peer datagram's UDP payload, the ChannelData without its 4-byte header), by direction and family."),
    ("turnbpf_passed_packets_total", "counter",
     "Packets the fast path looked at and passed to the kernel (and so to the server) unmodified, by reason."),
    ("turnbpf_bindings_learned_total", "counter",
     "Grants learned from the server's success responses, by kind (allocation, permission, channel)."),
    ("turnbpf_bindings_ended_total", "counter",
     "Bindings the agent removed because they ended (expired, or ended at the server), by kind."),
    ("turnbpf_redirect_dropped_total", "counter",
     "Relayed frames the kernel dropped after the fast path redirected them."),
    ("turnbpf_redirect_errors_total", "counter",
     "Redirects that failed in the kernel after the fast path returned."),
    ("turnbpf_events_total", "counter",
     "Every counter of the BPF programs by name (the table turn-bpf status prints)."),
    ("turnbpf_table_entries", "gauge", "Entries in each table of the mirrored state."),
    ("turnbpf_table_max_entries", "gauge", "Capacity of each table."),
    ("turnbpf_table_memory_bytes", "gauge", "Kernel memory of each table."),
    ("turnbpf_sweep_duration_seconds", "gauge", "How long the last full sweep took."),
    ("turnbpf_start_time_seconds", "gauge", "When the agent started, in seconds since the Unix epoch."),
    ("turnbpf_build_info", "gauge", "Always 1: the agent's version and the server profile it runs with."),
];

/// The learned kinds and the counters they come from.
const LEARNED: &[(&str, &str)] = &[
    ("allocation", "LEARN_ALLOC"),
    ("permission", "LEARN_PERM"),
    ("channel", "LEARN_CHANNEL"),
];

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `/metrics` page.
pub fn render(snap: &Snapshot, run: &RunCounts, info: &BuildInfo) -> String {
    let mut out = String::new();
    let mut series: Vec<(&str, String, String)> = Vec::new();
    let mut add = |name: &'static str, labels: &[(&str, &str)], value: String| {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let l = if l.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", l.join(","))
        };
        series.push((name, l, value));
    };

    for p in &snap.relayed {
        let labels = [
            ("direction", p.direction.name()),
            ("in_family", family_name(p.in_v6)),
            ("out_family", family_name(p.out_v6)),
        ];
        add(
            "turnbpf_relayed_packets_total",
            &labels,
            p.packets.to_string(),
        );
        add("turnbpf_relayed_bytes_total", &labels, p.bytes.to_string());
    }
    for (i, (_, name, _)) in STATS.iter().enumerate() {
        if let Some(reason) = name.strip_prefix("PASS_") {
            let reason = reason.to_ascii_lowercase();
            add(
                "turnbpf_passed_packets_total",
                &[("reason", &reason)],
                snap.counters.0[i].to_string(),
            );
        }
    }
    for (kind, counter) in LEARNED {
        add(
            "turnbpf_bindings_learned_total",
            &[("kind", kind)],
            snap.counters.get(counter).to_string(),
        );
    }
    for (kind, n) in [
        ("allocation", run.allocations_ended),
        ("permission", run.permissions_ended),
        ("channel", run.channels_ended),
    ] {
        add(
            "turnbpf_bindings_ended_total",
            &[("kind", kind)],
            n.to_string(),
        );
    }
    add(
        "turnbpf_redirect_dropped_total",
        &[],
        snap.counters.get("XMIT_DROPPED").to_string(),
    );
    add(
        "turnbpf_redirect_errors_total",
        &[],
        snap.counters.get("XMIT_ERROR").to_string(),
    );
    for (i, (_, name, _)) in STATS.iter().enumerate() {
        add(
            "turnbpf_events_total",
            &[("counter", name)],
            snap.counters.0[i].to_string(),
        );
    }
    for t in &snap.tables {
        add(
            "turnbpf_table_entries",
            &[("table", t.name)],
            t.entries.to_string(),
        );
        add(
            "turnbpf_table_max_entries",
            &[("table", t.name)],
            t.max_entries.to_string(),
        );
        add(
            "turnbpf_table_memory_bytes",
            &[("table", t.name)],
            t.memory_bytes.to_string(),
        );
    }
    add(
        "turnbpf_sweep_duration_seconds",
        &[],
        format!("{:.6}", run.sweep_seconds),
    );
    let start = info
        .start_time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    add(
        "turnbpf_start_time_seconds",
        &[],
        format!("{:.3}", start.as_secs_f64()),
    );
    add(
        "turnbpf_build_info",
        &[("version", info.version), ("server", &info.server)],
        "1".into(),
    );

    for (name, ty, help) in METRICS {
        let mine: Vec<_> = series.iter().filter(|(n, _, _)| n == name).collect();
        if mine.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {ty}");
        for (_, labels, value) in mine {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    }
    out
}

/// Listen on `addr` (before anything is attached, so a taken port is refused cleanly).
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("listening for Prometheus on {addr}"))
}

/// Serve `/metrics` from `listener` on a thread of its own, for as long as the process runs.
pub fn serve(
    listener: TcpListener,
    sources: Sources,
    run: Arc<RunStats>,
    info: BuildInfo,
) -> Result<()> {
    let addr = listener.local_addr().context("the metrics address")?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let page = || -> Result<String> {
                            Ok(render(&sources.snapshot()?, &run.get(), &info))
                        };
                        if let Err(e) = handle(stream, &page) {
                            debug!("metrics request: {e:#}");
                        }
                    }
                    Err(e) => {
                        warn!("accepting a metrics connection: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .context("starting the metrics thread")?;
    info!("serving Prometheus metrics on http://{addr}/metrics");
    Ok(())
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head: bool },
    NotFound,
    BadMethod,
    BadRequest,
    TooLarge,
}

/// Route a request head (everything up to the blank line, or what arrived of it).
fn route(head: &[u8], complete: bool) -> Route {
    if !complete {
        return if head.len() >= MAX_REQUEST {
            Route::TooLarge
        } else {
            Route::BadRequest
        };
    }
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let line = text.lines().next().unwrap_or("");
    let mut w = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (w.next(), w.next(), w.next(), w.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics {
            head: method == "HEAD",
        },
        (_, "/metrics") => Route::BadMethod,
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::BadMethod,
    }
}

/// Read the request head: up to the blank line, at most MAX_REQUEST bytes, within the
/// deadline. Returns the bytes and whether the head was complete.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if head_end(&buf).is_some() {
            return (buf, true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if buf.len() >= MAX_REQUEST || left.is_zero() {
            return (buf, false);
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return (buf, false);
        }
        let want = chunk.len().min(MAX_REQUEST - buf.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) | Err(_) => return (buf, false),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

fn handle(mut stream: TcpStream, page: &dyn Fn() -> Result<String>) -> Result<()> {
    let deadline = Instant::now() + CONN_DEADLINE;
    let (head, complete) = read_head(&mut stream, deadline);
    let route = route(&head, complete);
    let (status, body, head_only) = match route {
        Route::Metrics { head } => match page() {
            Ok(p) => ("200 OK", p, head),
            Err(e) => {
                warn!("reading the maps for /metrics: {e:#}");
                ("500 Internal Server Error", format!("{e:#}\n"), false)
            }
        },
        Route::NotFound => ("404 Not Found", "not found: try /metrics\n".into(), false),
        Route::BadMethod => ("405 Method Not Allowed", "GET /metrics\n".into(), false),
        Route::BadRequest => ("400 Bad Request", "bad request\n".into(), false),
        Route::TooLarge => (
            "431 Request Header Fields Too Large",
            "request too large\n".into(),
            false,
        ),
    };
    let ctype = if matches!(route, Route::Metrics { .. }) && status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut resp = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: \
         close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        resp.extend_from_slice(body.as_bytes());
    }
    let left = deadline.saturating_duration_since(Instant::now());
    stream.set_write_timeout(Some(left.max(Duration::from_millis(100))))?;
    stream.write_all(&resp)?;
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Direction, PathCount, TableFill};
    use crate::stats::{code, Counters, N_STATS};

    fn snap() -> Snapshot {
        let mut c = Counters(vec![0; N_STATS]);
        c.0[code("RELAYED_TO_PEER")] = 10;
        c.0[code("PASS_NO_CHANNEL")] = 3;
        c.0[code("LEARN_CHANNEL")] = 1;
        c.0[code("XMIT_DROPPED")] = 2;
        Snapshot {
            counters: c,
            relayed: vec![PathCount {
                direction: Direction::ToPeer,
                in_v6: false,
                out_v6: true,
                packets: 10,
                bytes: 1234,
            }],
            tables: vec![TableFill {
                name: "chans",
                meaning: "channels, client side",
                entries: 1,
                max_entries: 131072,
                memory_bytes: 4096,
            }],
        }
    }

    fn info() -> BuildInfo {
        BuildInfo {
            version: "0.1.0",
            server: "coturn".into(),
            start_time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_500),
        }
    }

    #[test]
    fn the_page_in_the_text_format() {
        let run = RunCounts {
            channels_ended: 4,
            sweep_seconds: 0.0025,
            ..Default::default()
        };
        let p = render(&snap(), &run, &info());
        for line in [
            "# TYPE turnbpf_relayed_packets_total counter",
            "turnbpf_relayed_packets_total{direction=\"to_peer\",in_family=\"ipv4\",out_family=\"ipv6\"} 10",
            "turnbpf_relayed_bytes_total{direction=\"to_peer\",in_family=\"ipv4\",out_family=\"ipv6\"} 1234",
            "turnbpf_passed_packets_total{reason=\"no_channel\"} 3",
            "turnbpf_passed_packets_total{reason=\"stun\"} 0",
            "turnbpf_bindings_learned_total{kind=\"channel\"} 1",
            "turnbpf_bindings_ended_total{kind=\"channel\"} 4",
            "turnbpf_redirect_dropped_total 2",
            "turnbpf_redirect_errors_total 0",
            "turnbpf_events_total{counter=\"RELAYED_TO_PEER\"} 10",
            "# TYPE turnbpf_table_entries gauge",
            "turnbpf_table_entries{table=\"chans\"} 1",
            "turnbpf_table_max_entries{table=\"chans\"} 131072",
            "turnbpf_table_memory_bytes{table=\"chans\"} 4096",
            "turnbpf_sweep_duration_seconds 0.002500",
            "turnbpf_start_time_seconds 1700000000.500",
            "turnbpf_build_info{version=\"0.1.0\",server=\"coturn\"} 1",
        ] {
            assert!(p.lines().any(|l| l == line), "missing '{line}' in:\n{p}");
        }
        // Every series line belongs to the metric whose TYPE came last; each TYPE comes once.
        let mut current = "";
        let mut typed = std::collections::HashSet::new();
        for l in p.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap();
                assert!(typed.insert(current), "{current} typed twice");
            } else if !l.starts_with('#') {
                assert!(l.starts_with(current), "'{l}' outside {current}");
                let name_end = l.find(['{', ' ']).unwrap();
                assert_eq!(&l[..name_end], current);
            }
        }
        assert!(p.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn routes() {
        let r = |s: &str| route(s.as_bytes(), true);
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(r("GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metr", false), Route::BadRequest);
        assert_eq!(route(&[b'a'; MAX_REQUEST], false), Route::TooLarge);
    }

    /// A real socket: 200 with the page, 404 elsewhere, 431 for an endless head.
    #[test]
    fn serves_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..3 {
                let (s, _) = listener.accept().unwrap();
                handle(s, &|| Ok("turnbpf_up 1\n".to_string())).unwrap();
            }
        });
        let ask = |req: &[u8]| {
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(req);
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\nturnbpf_up 1\n"), "{ok}");
        let nf = ask(b"GET /other HTTP/1.1\r\n\r\n");
        assert!(nf.starts_with("HTTP/1.0 404 "), "{nf}");
        let big = ask(&vec![b'a'; MAX_REQUEST]);
        assert!(big.starts_with("HTTP/1.0 431 "), "{big}");
        server.join().unwrap();
    }
}
