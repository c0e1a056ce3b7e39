//! A real Prometheus (Debian's `prometheus` package) in a lab namespace, scraping a target every
//! second: its configuration and its database in a temporary directory of their own, a bounded
//! run, killed and removed on drop. And a minimal HTTP GET, to ask it (and the agent) things.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::lab;

/// The Prometheus server binary, if installed.
pub fn binary() -> Option<PathBuf> {
    lab::find_tool("prometheus")
}

/// A running Prometheus. Dropping it kills it and removes its directory.
pub struct Prometheus {
    child: Option<Child>,
    dir: PathBuf,
    ns: String,
    /// Where its own HTTP API listens (in `ns`).
    pub api: SocketAddr,
}

impl Prometheus {
    /// Start Prometheus in `ns`, scraping `target` (`ADDR:PORT`, `/metrics`) every second, its
    /// API on `api`; killed after `max_run` at the latest. Waits until it is ready.
    pub fn start(ns: &str, target: SocketAddr, api: SocketAddr, max_run: Duration) -> Result<Self> {
        let bin = binary().context("prometheus is not installed (Debian package prometheus)")?;
        let dir = std::env::temp_dir().join(format!("{ns}-prometheus-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data"))?;
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: turnbpf\n    static_configs:\n      - targets: \
                 ['{target}']\n"
            ),
        )?;
        let log = File::create(dir.join("prometheus.log"))?;
        // `timeout` bounds the run even if this process dies without dropping the guard.
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "timeout", "-s", "KILL"])
            .arg(format!("{}", max_run.as_secs().max(1)))
            .arg(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut p = Prometheus {
            child: Some(child),
            dir,
            ns: ns.to_string(),
            api,
        };
        p.wait_ready(Duration::from_secs(30))?;
        Ok(p)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = http_get(&self.ns, self.api, "/-/ready") {
                return Ok(());
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("prometheus exited ({st}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Its own log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The value of an instant query that yields one sample (None: no sample yet).
    pub fn query(&self, promql: &str) -> Result<Option<f64>> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (code, body) = http_get(&self.ns, self.api, &path)?;
        if code != 200 {
            bail!("query {promql}: HTTP {code}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body).context("the query's answer")?;
        let result = v["data"]["result"]
            .as_array()
            .with_context(|| format!("query {promql}: no result in {body}"))?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => {
                let s = one["value"][1]
                    .as_str()
                    .with_context(|| format!("query {promql}: no value in {body}"))?;
                Ok(Some(s.parse().context("a sample value")?))
            }
            _ => bail!("query {promql}: {} series, expected one", result.len()),
        }
    }

    /// Wait (bounded) until `promql` yields `want`; returns the last value seen.
    pub fn wait_for(&self, promql: &str, want: f64, timeout: Duration) -> Result<Option<f64>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.query(promql)?;
            if got == Some(want) || Instant::now() > deadline {
                return Ok(got);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs `timeout`, which waits for prometheus: kill the whole group
            // is not ours to do; SIGTERM to timeout is passed on to its child.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encode everything but unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` from `addr` in namespace `ns` (HTTP/1.0): (status code, body).
pub fn http_get(ns: &str, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    lab::in_ns(ns, move || -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status line in '{head}'"))?;
        Ok((code, body.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_queries() {
        assert_eq!(url_encode("sum(x{a=\"b\"})"), "sum%28x%7Ba%3D%22b%22%7D%29");
    }
}
