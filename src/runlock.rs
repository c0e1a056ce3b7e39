//! Which agent is live, and what it changed on the host: under `/run/turn-bpf/`, per network
//! namespace and client-facing interface, a lock file the running agent holds (`flock`) and a
//! record of the forwarding settings it switched on.
//!
//! The lock is released by the kernel when the agent ends in any way, SIGKILL included; the
//! record stays. So `turn-bpf detach` can restore what a killed agent changed, and the next
//! agent takes those changes over as its own (they would otherwise look like the operator's).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::attach::Family;

/// Where the locks and records live (not remounted by `ip netns exec`).
pub const RUN_DIR: &str = "/run/turn-bpf";

/// What an agent switched on, to be switched back off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Forwarding switched on, in order.
    pub forwarding: Vec<(Family, String)>,
    /// Interfaces whose accept_ra went from 1 to 2.
    pub accept_ra: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.forwarding.is_empty() && self.accept_ra.is_empty()
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (f, iface) in &self.forwarding {
            let fam = match f {
                Family::V4 => "ipv4",
                Family::V6 => "ipv6",
            };
            out.push_str(&format!("forwarding {fam} {iface}\n"));
        }
        for iface in &self.accept_ra {
            out.push_str(&format!("accept_ra {iface}\n"));
        }
        out
    }

    fn parse(text: &str) -> Changes {
        let mut c = Changes::default();
        for line in text.lines() {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["forwarding", "ipv4", iface] => c.forwarding.push((Family::V4, iface.into())),
                ["forwarding", "ipv6", iface] => c.forwarding.push((Family::V6, iface.into())),
                ["accept_ra", iface] => c.accept_ra.push(iface.into()),
                _ => {}
            }
        }
        c
    }
}

/// This network namespace's cookie (unique while the system runs, unlike its inode number).
fn netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: i32 = 71;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening a socket to read the network namespace's cookie")?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as nix::libc::socklen_t;
    // SAFETY: cookie and len describe a u64 buffer.
    let rc = unsafe {
        nix::libc::getsockopt(
            sock.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("reading the network namespace's cookie");
    }
    Ok(cookie)
}

/// The lock and record of the agent on `iface` in this network namespace.
pub struct RunLock {
    file: File,
    record: PathBuf,
    held: bool,
}

impl RunLock {
    /// Open (creating) the lock of `iface`, without taking it.
    pub fn open(iface: &str) -> Result<RunLock> {
        fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        let base = Path::new(RUN_DIR).join(format!("ns{}-{iface}", netns_cookie()?));
        let lock = base.with_extension("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .with_context(|| format!("opening {}", lock.display()))?;
        Ok(RunLock {
            file,
            record: base.with_extension("changes"),
            held: false,
        })
    }

    /// Take the lock: refused while a live agent holds it.
    pub fn acquire(iface: &str) -> Result<RunLock> {
        let mut l = RunLock::open(iface)?;
        if !l.try_lock()? {
            bail!(
                "a turn-bpf agent is already running on {iface} (it holds its lock in {RUN_DIR})"
            );
        }
        Ok(l)
    }

    /// Try to take the lock: false when another process holds it.
    pub fn try_lock(&mut self) -> Result<bool> {
        // SAFETY: flock on an fd we own.
        let rc = unsafe {
            nix::libc::flock(
                self.file.as_raw_fd(),
                nix::libc::LOCK_EX | nix::libc::LOCK_NB,
            )
        };
        if rc == 0 {
            self.held = true;
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(nix::libc::EWOULDBLOCK) {
            return Ok(false);
        }
        Err(e).context("taking the agent lock")
    }

    /// What an earlier agent recorded and did not restore (it was killed, or left its pins).
    pub fn leftover(&self) -> Changes {
        fs::read_to_string(&self.record)
            .map(|t| Changes::parse(&t))
            .unwrap_or_default()
    }

    /// Record `c` (replacing the record; none when empty).
    pub fn record(&self, c: &Changes) -> Result<()> {
        if c.is_empty() {
            return self.clear();
        }
        let tmp = self.record.with_extension("tmp");
        fs::write(&tmp, c.render()).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.record).with_context(|| format!("writing {}", self.record.display()))
    }

    /// Nothing left to restore.
    pub fn clear(&self) -> Result<()> {
        match fs::remove_file(&self.record) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.record.display()))
            }
            _ => Ok(()),
        }
    }

    pub fn held(&self) -> bool {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_survive_their_record() {
        let c = Changes {
            forwarding: vec![(Family::V4, "eth0".into()), (Family::V6, "eth1".into())],
            accept_ra: vec!["eth1".into()],
        };
        assert_eq!(Changes::parse(&c.render()), c);
        assert!(Changes::parse("").is_empty());
    }
}
