//! The `seam` node processes of a run: start, kill -9, restart, pause, resume, skew
//! the clock, stop.
//!
//! Each node runs `seam node` with its own data directory and log (stdout and stderr
//! appended to `nodes/nI.log` across restarts), in its network namespace in netns mode
//! (`setns` before `exec`), in its own process group (so a Ctrl-C at the terminal
//! reaches only the harness, which then stops the nodes in order), and with
//! `PR_SET_PDEATHSIG = SIGKILL`: if the harness dies, even by SIGKILL, its nodes die too.
//! The death signal is tied to the thread that forked, so every node is forked by one
//! long-lived spawner thread.
//!
//! Clock skew: when the run may skew clocks, every node starts under Debian's
//! libfaketime (`LD_PRELOAD`) with `FAKETIME_DONT_FAKE_MONOTONIC=1` (without it the
//! monotonic clock is faked too and tokio hangs) and `FAKETIME_TIMESTAMP_FILE` pointing
//! at `nodes/nI.faketime`, re-read at most every second
//! (`FAKETIME_CACHE_DURATION=1`). Writing `+5.000` there moves the node's wall clock
//! 5 s ahead while it runs; `+0` puts it back. Only the wall clock moves: timeouts and
//! elections (monotonic) are unaffected, leader-stamped command times and relaxed-tier
//! HLCs are.
//!
//! Dropping the [`Cluster`] SIGKILLs every node still running.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::net::{NetMode, Network, NodeNet};
use crate::proxy::{NodeId, PidTable};

/// Where libfaketime may be installed (Debian's `faketime` package first).
pub const FAKETIME_LIBS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
];
/// How long a node may take to exit after SIGTERM before it is SIGKILLed.
pub const STOP_GRACE_MS: u64 = 10_000;
/// How long reaping a SIGKILLed node may take.
pub const REAP_MS_MAX: u64 = 5_000;
/// The nodes' log filter (`RUST_LOG`), unless [`NODE_LOG_ENV`] overrides it.
pub const NODE_LOG_DEFAULT: &str = "info,openraft=warn,sled=warn,h2=warn,tower=warn";
/// Environment variable of the harness that sets the nodes' `RUST_LOG`.
pub const NODE_LOG_ENV: &str = "SEAM_JEPSEN_NODE_LOG";
/// Bytes of a crashed node's log quoted in the run's findings.
pub const LOG_TAIL_BYTES: u64 = 4_096;

/// Why a node could not be started or controlled.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Spawning failed.
    #[error("starting node {id} ({bin}): {source}")]
    Spawn {
        /// The node.
        id: NodeId,
        /// The binary.
        bin: String,
        /// The cause.
        source: io::Error,
    },
    /// A file of the node's could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// libfaketime is not installed.
    #[error("clock skew needs libfaketime (apt-get install faketime); looked in {0}")]
    NoFaketime(String),
    /// No such node.
    #[error("no node {0}")]
    NoNode(NodeId),
}

/// The installed libfaketime, if any.
pub fn find_faketime() -> Option<PathBuf> {
    FAKETIME_LIBS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A node that exited without being told to.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Exit {
    /// The node.
    pub node: NodeId,
    /// How it ended (`exit status: 101`, `signal: 6`).
    pub status: String,
    /// Milliseconds since the cluster started.
    pub at_ms: u64,
    /// The end of its log.
    pub log_tail: String,
}

struct Proc {
    child: Option<Child>,
    paused: bool,
}

type Job = (Command, mpsc::SyncSender<io::Result<Child>>);

/// The thread that forks every node (see the module docs for why one thread).
fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("seam-jepsen-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("the spawner thread starts");
        Mutex::new(tx)
    })
}

fn spawn_on_spawner(command: Command) -> io::Result<Child> {
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let sender = spawner().lock().unwrap_or_else(|p| p.into_inner()).clone();
    sender.send((command, reply_tx)).map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// The nodes of one run.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    nodes: Vec<NodeNet>,
    netns: BTreeMap<NodeId, PathBuf>,
    initial_cluster: String,
    control: Option<String>,
    faketime: Option<PathBuf>,
    pids: Arc<PidTable>,
    /// Each node's `--worker-threads` (0: the node's default).
    worker_threads: usize,
    procs: Mutex<BTreeMap<NodeId, Proc>>,
    exits: Mutex<Vec<Exit>>,
    started: Instant,
}

impl Cluster {
    /// Prepares (does not start) the nodes of `network`, with data and logs under `dir`.
    /// `skew`: start every node under libfaketime so its clock can be moved.
    pub fn new(
        bin: &Path,
        dir: &Path,
        network: &Network,
        control: Option<&str>,
        skew: bool,
    ) -> Result<Cluster, ClusterError> {
        let faketime = if skew {
            Some(find_faketime().ok_or_else(|| ClusterError::NoFaketime(FAKETIME_LIBS.join(", ")))?)
        } else {
            None
        };
        std::fs::create_dir_all(dir).map_err(|source| ClusterError::File { path: dir.into(), source })?;
        let netns = match network.mode {
            NetMode::Netns => {
                network.nodes.iter().filter_map(|n| Some((n.id, network.netns_path(n.id)?))).collect()
            }
            NetMode::Loopback => BTreeMap::new(),
        };
        let cluster = Cluster {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes: network.nodes.clone(),
            netns,
            initial_cluster: network.initial_cluster(),
            control: control.map(str::to_string),
            faketime,
            pids: network.pids.clone(),
            worker_threads: 0,
            procs: Mutex::new(BTreeMap::new()),
            exits: Mutex::new(Vec::new()),
            started: Instant::now(),
        };
        if cluster.faketime.is_some() {
            for node in &cluster.nodes {
                cluster.set_skew_ms(node.id, 0)?;
            }
        }
        Ok(cluster)
    }

    /// Starts every node with `--worker-threads threads` (0: the node's default).
    pub fn with_worker_threads(mut self, threads: usize) -> Cluster {
        self.worker_threads = threads;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Proc>> {
        // Children are only added and removed whole: usable after a panic.
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Node `id`'s addresses.
    pub fn node(&self, id: NodeId) -> Option<&NodeNet> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Node `id`'s log file.
    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("n{id}.log"))
    }

    fn skew_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("n{id}.faketime"))
    }

    /// Starts node `id` (again, after a kill: same data directory).
    pub fn start(&self, id: NodeId) -> Result<(), ClusterError> {
        let node = self.node(id).ok_or(ClusterError::NoNode(id))?.clone();
        let mut procs = self.lock();
        if procs.get(&id).is_some_and(|p| p.child.is_some()) {
            return Ok(());
        }
        let log_path = self.log_path(id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| ClusterError::File { path: log_path.clone(), source })?;
        let log_err = log.try_clone().map_err(|source| ClusterError::File { path: log_path, source })?;
        let mut command = Command::new(&self.bin);
        command
            .arg("node")
            .args(["--id", &id.to_string()])
            .args(["--region", &node.region])
            .args(["--listen", &node.listen.to_string()])
            .args(["--advertise", &node.advertise.to_string()])
            .args(["--metrics-listen", &node.metrics.to_string()])
            .arg("--data-dir")
            .arg(self.dir.join(format!("n{id}")))
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--worker-threads", &self.worker_threads.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SEAM_") {
                command.env_remove(key);
            }
        }
        let filter = std::env::var(NODE_LOG_ENV).unwrap_or_else(|_| NODE_LOG_DEFAULT.to_string());
        command.env("RUST_LOG", filter);
        command.env("NO_COLOR", "1");
        if let Some(control) = &self.control {
            command.env("SEAM_NEGATIVE_CONTROL", control);
        }
        if let Some(lib) = &self.faketime {
            command
                .env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", self.skew_path(id))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_CACHE_DURATION", "1");
        }
        let netns = match self.netns.get(&id) {
            Some(path) => {
                Some(File::open(path).map_err(|source| ClusterError::File { path: path.clone(), source })?)
            }
            None => None,
        };
        let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (setns, prctl, getppid, _exit) on a descriptor the
        // parent keeps open until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = netns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The harness died between fork and prctl: do not outlive it.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = spawn_on_spawner(command).map_err(|source| ClusterError::Spawn {
            id,
            bin: self.bin.display().to_string(),
            source,
        })?;
        drop(netns);
        self.pids.set(id, Some(child.id()));
        procs.insert(id, Proc { child: Some(child), paused: false });
        Ok(())
    }

    /// Starts every node.
    pub fn start_all(&self) -> Result<(), ClusterError> {
        for id in self.ids() {
            self.start(id)?;
        }
        Ok(())
    }

    fn signal(&self, id: NodeId, signal: i32) -> bool {
        let procs = self.lock();
        let Some(child) = procs.get(&id).and_then(|p| p.child.as_ref()) else { return false };
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(child.id() as i32, signal) == 0 }
    }

    /// SIGKILLs node `id` and reaps it. False if it was not running.
    pub fn kill(&self, id: NodeId) -> bool {
        let child = {
            let mut procs = self.lock();
            procs.get_mut(&id).and_then(|p| {
                p.paused = false;
                p.child.take()
            })
        };
        self.pids.set(id, None);
        match child {
            Some(mut child) => {
                let _ = child.kill();
                reap(&mut child, Duration::from_millis(REAP_MS_MAX));
                self.after_exit(child.id());
                true
            }
            None => false,
        }
    }

    /// SIGSTOPs node `id`.
    pub fn pause(&self, id: NodeId) -> bool {
        let done = self.signal(id, libc::SIGSTOP);
        if done {
            if let Some(p) = self.lock().get_mut(&id) {
                p.paused = true;
            }
        }
        done
    }

    /// SIGCONTs node `id`.
    pub fn resume(&self, id: NodeId) -> bool {
        let done = self.signal(id, libc::SIGCONT);
        if let Some(p) = self.lock().get_mut(&id) {
            p.paused = false;
        }
        done
    }

    /// Whether node `id` has a live process (it may be paused).
    pub fn is_running(&self, id: NodeId) -> bool {
        self.lock().get(&id).is_some_and(|p| p.child.is_some())
    }

    /// Moves node `id`'s wall clock `offset_ms` away from the real one (0: back).
    pub fn set_skew_ms(&self, id: NodeId, offset_ms: i64) -> Result<(), ClusterError> {
        if self.faketime.is_none() {
            return Err(ClusterError::NoFaketime("(skew not enabled for this run)".into()));
        }
        let path = self.skew_path(id);
        let sign = if offset_ms < 0 { '-' } else { '+' };
        let abs = offset_ms.unsigned_abs();
        let text = format!("{sign}{}.{:03}\n", abs / 1000, abs % 1000);
        // Write aside and rename, so libfaketime never reads a half-written file.
        let tmp = path.with_extension("faketime.tmp");
        std::fs::write(&tmp, text).map_err(|source| ClusterError::File { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &path).map_err(|source| ClusterError::File { path, source })
    }

    /// Notes nodes that exited on their own since the last call (crashes), reaping them.
    pub fn check_exits(&self) -> Vec<Exit> {
        let mut found = Vec::new();
        {
            let mut procs = self.lock();
            for (&id, proc) in procs.iter_mut() {
                let Some(child) = proc.child.as_mut() else { continue };
                if let Ok(Some(status)) = child.try_wait() {
                    let pid = child.id();
                    proc.child = None;
                    found.push((id, pid, status.to_string()));
                }
            }
        }
        let mut exits = Vec::new();
        for (id, pid, status) in found {
            self.pids.set(id, None);
            self.after_exit(pid);
            let exit = Exit {
                node: id,
                status,
                at_ms: self.started.elapsed().as_millis() as u64,
                log_tail: log_tail(&self.log_path(id)),
            };
            let hint = if exit.status == "exit status: 0" {
                " (a clean shutdown: something other than the harness sent it SIGTERM or SIGINT)"
            } else {
                ""
            };
            eprintln!(
                "seam-jepsen: node {id} exited on its own ({}){hint}; see {}",
                exit.status,
                self.log_path(id).display()
            );
            exits.push(exit.clone());
            self.exits.lock().unwrap_or_else(|p| p.into_inner()).push(exit);
        }
        exits
    }

    /// Every unexpected exit seen so far.
    pub fn exits(&self) -> Vec<Exit> {
        self.exits.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops every node: SIGCONT, SIGTERM, then SIGKILL after [`STOP_GRACE_MS`].
    /// Returns the nodes that did not exit cleanly (status and log tail).
    pub fn stop_all(&self) -> Vec<Exit> {
        self.check_exits();
        let children: Vec<(NodeId, Child)> = {
            let mut procs = self.lock();
            procs.iter_mut().filter_map(|(&id, p)| p.child.take().map(|c| (id, c))).collect()
        };
        for (_, child) in &children {
            // SAFETY: signals to our own unreaped children.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGCONT);
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_GRACE_MS);
        let mut unclean = Vec::new();
        for (id, mut child) in children {
            let left = deadline.saturating_duration_since(Instant::now());
            let status = match reap(&mut child, left) {
                Some(status) => status.to_string(),
                None => {
                    let _ = child.kill();
                    reap(&mut child, Duration::from_millis(REAP_MS_MAX));
                    format!("did not exit within {STOP_GRACE_MS} ms of SIGTERM; killed")
                }
            };
            self.pids.set(id, None);
            self.after_exit(child.id());
            if status != "exit status: 0" {
                unclean.push(Exit {
                    node: id,
                    status,
                    at_ms: self.started.elapsed().as_millis() as u64,
                    log_tail: log_tail(&self.log_path(id)),
                });
            }
        }
        unclean
    }

    /// Removes what libfaketime leaves in /dev/shm when its process is killed.
    fn after_exit(&self, pid: u32) {
        if self.faketime.is_some() {
            let _ = std::fs::remove_file(format!("/dev/shm/faketime_shm_{pid}"));
            let _ = std::fs::remove_file(format!("/dev/shm/sem.faketime_sem_{pid}"));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let children: Vec<Child> = self.lock().values_mut().filter_map(|p| p.child.take()).collect();
        for mut child in children {
            let _ = child.kill();
            reap(&mut child, Duration::from_millis(REAP_MS_MAX));
            self.after_exit(child.id());
        }
    }
}

/// Waits up to `limit` for `child` to exit.
fn reap(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// The last [`LOG_TAIL_BYTES`] of a log.
fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else { return String::new() };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
