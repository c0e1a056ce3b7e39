//! Which process holds which socket: every process's open files are links in `/proc/<pid>/fd`,
//! and a socket's link reads `socket:[INODE]`, the inode `/proc/net/udp` lists it under. Also the
//! facts about a process the server watch keeps (its command name, executable, pid file).
//!
//! The root is a parameter so that tests can build a fake `/proc` tree.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The inode in a socket's fd link (`socket:[197916]`), or None for any other file.
pub fn socket_inode(link: &OsStr) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The pid in a pid file (one decimal number, surrounding whitespace allowed).
pub fn read_pidfile(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the pid file {}", path.display()))?;
    match text.trim().parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => bail!(
            "the pid file {} holds no pid: '{}'",
            path.display(),
            text.trim()
        ),
    }
}

/// A `/proc` tree (the real one at `/proc`).
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
}

impl Default for ProcFs {
    fn default() -> Self {
        ProcFs::at("/proc")
    }
}

impl ProcFs {
    pub fn at(root: impl Into<PathBuf>) -> ProcFs {
        ProcFs { root: root.into() }
    }

    /// Every process (the numeric entries; threads are not listed there).
    pub fn pids(&self) -> Result<Vec<u32>> {
        let dir = std::fs::read_dir(&self.root)
            .with_context(|| format!("listing {}", self.root.display()))?;
        let mut pids: Vec<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// The socket inodes process `pid` holds open. An error when the process does not exist
    /// (or its fds cannot be read); fds closed during the walk are skipped.
    pub fn sockets_of(&self, pid: u32) -> Result<BTreeSet<u64>> {
        let fd_dir = self.root.join(pid.to_string()).join("fd");
        let dir =
            std::fs::read_dir(&fd_dir).with_context(|| format!("reading {}", fd_dir.display()))?;
        Ok(dir
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|link| socket_inode(link.as_os_str()))
            .collect())
    }

    /// The processes holding each of `inodes` (an inode nobody holds is left out). Processes
    /// that end or cannot be read during the walk are skipped.
    pub fn owners(&self, inodes: &BTreeSet<u64>) -> Result<BTreeMap<u64, BTreeSet<u32>>> {
        let mut out: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
        if inodes.is_empty() {
            return Ok(out);
        }
        for pid in self.pids()? {
            let Ok(held) = self.sockets_of(pid) else {
                continue;
            };
            for inode in held.intersection(inodes) {
                out.entry(*inode).or_default().insert(pid);
            }
        }
        Ok(out)
    }

    /// The command name of `pid` (`?` when it cannot be read), for messages.
    pub fn comm(&self, pid: u32) -> String {
        std::fs::read_to_string(self.root.join(pid.to_string()).join("comm"))
            .map_or_else(|_| "?".into(), |c| c.trim().to_string())
    }

    /// `pid`'s executable as the kernel holds it open (readable even after the file was replaced,
    /// and from another mount namespace).
    pub fn exe_file(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string()).join("exe")
    }

    /// The executable of `pid`, without the ` (deleted)` the kernel appends once the file was
    /// replaced (a package upgrade under a running server).
    pub fn exe(&self, pid: u32) -> Option<PathBuf> {
        let link = std::fs::read_link(self.root.join(pid.to_string()).join("exe")).ok()?;
        let s = link.to_str()?;
        Some(PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(s)))
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake `/proc` under a fresh temporary directory, removed on drop.
    pub struct FakeProc {
        pub root: PathBuf,
    }

    impl FakeProc {
        pub fn new(tag: &str) -> FakeProc {
            let root = std::env::temp_dir()
                .join(format!("turn-bpf-fakeproc-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            FakeProc { root }
        }

        /// Process `pid` (replacing any before) named `comm`, running `exe`, holding `socks` (and a
        /// few other files).
        pub fn process(&self, pid: u32, comm: &str, exe: &str, socks: &[u64]) {
            let dir = self.root.join(pid.to_string());
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            symlink(exe, dir.join("exe")).unwrap();
            symlink("/dev/null", dir.join("fd/0")).unwrap();
            symlink("pipe:[12]", dir.join("fd/1")).unwrap();
            for (i, s) in socks.iter().enumerate() {
                symlink(format!("socket:[{s}]"), dir.join(format!("fd/{}", i + 3))).unwrap();
            }
        }

        pub fn procfs(&self) -> ProcFs {
            ProcFs::at(&self.root)
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn reads_socket_links() {
        assert_eq!(socket_inode(OsStr::new("socket:[197916]")), Some(197916));
        for other in [
            "pipe:[12]",
            "/dev/null",
            "socket:[]",
            "socket:[12",
            "anon_inode:[bpf]",
        ] {
            assert_eq!(socket_inode(OsStr::new(other)), None, "{other}");
        }
    }

    #[test]
    fn finds_the_owners_of_sockets() {
        let p = FakeProc::new("owners");
        p.process(100, "turnserver", "/usr/bin/turnserver", &[11, 12, 13]);
        p.process(200, "squatter", "/usr/bin/python3", &[21]);
        p.process(300, "forked", "/usr/bin/turnserver", &[13]);
        std::fs::create_dir_all(p.root.join("self")).unwrap(); // not a pid
        std::fs::create_dir_all(p.root.join("400")).unwrap(); // ended: no fd directory
        let fs = p.procfs();
        assert_eq!(fs.pids().unwrap(), [100, 200, 300, 400]);
        assert_eq!(fs.sockets_of(100).unwrap(), BTreeSet::from([11, 12, 13]));
        assert!(fs.sockets_of(999).is_err(), "no such process");
        let owners = fs.owners(&BTreeSet::from([11, 13, 21, 99])).unwrap();
        assert_eq!(
            owners,
            BTreeMap::from([
                (11, BTreeSet::from([100])),
                (13, BTreeSet::from([100, 300])),
                (21, BTreeSet::from([200])),
            ])
        );
        assert!(fs.owners(&BTreeSet::new()).unwrap().is_empty());
        assert_eq!(fs.comm(100), "turnserver");
        assert_eq!(fs.comm(999), "?");
        assert_eq!(fs.exe(200), Some(PathBuf::from("/usr/bin/python3")));
        p.process(500, "upgraded", "/usr/bin/turnserver (deleted)", &[]);
        assert_eq!(fs.exe(500), Some(PathBuf::from("/usr/bin/turnserver")));
    }

    #[test]
    fn reads_pid_files() {
        let p = FakeProc::new("pidfile");
        let f = p.root.join("turnserver.pid");
        std::fs::write(&f, "4119\n").unwrap();
        assert_eq!(read_pidfile(&f).unwrap(), 4119);
        for bad in ["", "x", "0", "-1"] {
            std::fs::write(&f, bad).unwrap();
            let e = read_pidfile(&f).unwrap_err().to_string();
            assert!(e.contains("holds no pid"), "{bad:?}: {e}");
        }
        assert!(read_pidfile(&p.root.join("missing")).is_err());
    }

    #[test]
    fn the_real_proc_shows_our_own_socket() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fs = ProcFs::default();
        let mine = fs.sockets_of(std::process::id()).unwrap();
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", sock.as_raw_fd())).unwrap();
        let inode = socket_inode(link.as_os_str()).unwrap();
        assert!(mine.contains(&inode));
        let owners = fs.owners(&BTreeSet::from([inode])).unwrap();
        assert_eq!(owners[&inode], BTreeSet::from([std::process::id()]));
    }
}
