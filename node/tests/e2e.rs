//! End to end: the built `seam` binary as real processes. Three nodes on loopback are
//! driven only through the CLI and HTTP, as an operator would: status, writes, reads,
//! compare-and-set, transactions, ranges, bad input, a `kill -9` of the leader, a restart,
//! and nodes that must refuse to start.

use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

const SEAM: &str = env!("CARGO_BIN_EXE_seam");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

struct Node {
    id: u64,
    /// `--worker-threads`.
    worker_threads: usize,
    addr: String,
    metrics: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Node `id` on free loopback ports, with its data in `dir`; not started.
    fn new(id: u64, worker_threads: usize, dir: PathBuf) -> Node {
        Node {
            id,
            worker_threads,
            addr: format!("127.0.0.1:{}", free_port()),
            metrics: format!("127.0.0.1:{}", free_port()),
            dir,
            child: None,
        }
    }

    fn spawn(&mut self, initial: &str, log_dir: &Path) {
        let log = std::fs::File::create(log_dir.join(format!("node-{}.log", self.id))).expect("log file");
        let child = Command::new(SEAM)
            .args(["node", "--id", &self.id.to_string(), "--region", &format!("r{}", self.id)])
            .args(["--listen", &self.addr, "--metrics-listen", &self.metrics, "--initial-cluster", initial])
            .args(["--worker-threads", &self.worker_threads.to_string()])
            .arg("--data-dir")
            .arg(&self.dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("seam node starts");
        self.child = Some(child);
    }

    /// Stops the node with SIGTERM, a clean shutdown, and returns how it exited.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the node runs");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) with a valid signal on our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM sent");
        child.wait().expect("the node exits")
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Cluster {
    nodes: Vec<Node>,
    initial: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes: Vec<Node> = (1..=3)
            .map(|id| {
                // Node 1 runs on a single-threaded runtime, the others on one thread per core.
                let worker_threads = if id == 1 { 1 } else { 0 };
                Node::new(id, worker_threads, dir.path().join(format!("data-{id}")))
            })
            .collect();
        let initial: Vec<String> = nodes.iter().map(|n| format!("{}={}@r{}", n.id, n.addr, n.id)).collect();
        let initial = initial.join(",");
        for n in &mut nodes {
            n.spawn(&initial, dir.path());
        }
        Cluster { nodes, initial, dir }
    }

    fn endpoints(&self) -> String {
        self.nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>().join(",")
    }

    fn seam(&self, args: &[&str]) -> Output {
        Command::new(SEAM)
            .args(["--endpoints", &self.endpoints(), "--timeout-ms", "3000"])
            .args(args)
            .output()
            .expect("seam runs")
    }

    fn node_log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    /// The leader every node agrees on, per `seam status --json`.
    fn leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.seam(&["status", "--json"]);
            if out.status.success() {
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("status --json is JSON");
                if let Some(l) = v["leader"].as_u64().filter(|l| *l > 0) {
                    return l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {timeout:?}; last status: {}\nnode 1 log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                self.node_log(1)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status,
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("metrics address answers");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

#[test]
fn three_processes_serve_the_cli_and_survive_a_leader_kill() {
    let mut cluster = Cluster::start();
    let leader = cluster.leader(Duration::from_secs(30));

    // Writes, reads, cas, txn, range.
    ok(cluster.seam(&["put", "inventory/sku-1", "17"]), "put");
    let got = ok(cluster.seam(&["get", "inventory/sku-1", "--json"]), "get");
    let v: serde_json::Value = serde_json::from_str(&got).expect("get --json is JSON");
    assert_eq!(v["value"], "17", "{got}");
    ok(cluster.seam(&["cas", "inventory/sku-1", "16", "--expect", "17"]), "cas that holds");
    let failed = cluster.seam(&["cas", "inventory/sku-1", "15", "--expect", "17"]);
    assert_eq!(failed.status.code(), Some(1), "a cas whose expectation fails exits 1: {}", stdout(&failed));
    ok(cluster.seam(&["put", "inventory/sku-2", "5"]), "put");
    let mut txn = Command::new(SEAM)
        .args(["--endpoints", &cluster.endpoints(), "txn"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("txn");
    txn.stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"compare value inventory/sku-1 = 16\nsuccess put inventory/sku-1 14\nsuccess put inventory/sku-2 6\n")
        .expect("script");
    let txn = txn.wait_with_output().expect("txn output");
    assert!(txn.status.success(), "txn: {}", stdout(&txn));
    let range = ok(cluster.seam(&["range", "inventory/", "--prefix", "--json"]), "range");
    assert!(range.contains("14") && range.contains('6'), "range shows the transaction's writes: {range}");

    // Bad input names the limit and writes nothing.
    let big = "k".repeat(10_000);
    let bad = cluster.seam(&["put", &big, "v"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("key_bytes_max"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Metrics and health over HTTP.
    let metrics = http_get(&cluster.nodes[0].metrics, "/metrics");
    assert!(metrics.contains("seam_raft_term") && metrics.contains("seam_requests_total"), "{metrics}");
    let health = http_get(&cluster.nodes[0].metrics, "/health");
    assert!(health.contains("\"status\":\"ok\""), "{health}");

    // kill -9 the leader: the survivors elect a new one and keep serving.
    let killed = cluster.nodes.iter().position(|n| n.id == leader).expect("leader is a node");
    cluster.nodes[killed].kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if cluster.seam(&["put", "after-kill", "yes"]).status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "no write succeeded within 30 s of killing the leader");
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = ok(cluster.seam(&["get", "inventory/sku-1"]), "get after kill");
    assert!(got.contains("14"), "{got}");

    // The killed node restarts from its data directory and rejoins.
    let initial = cluster.initial.clone();
    let log_dir = cluster.dir.path().to_path_buf();
    cluster.nodes[killed].spawn(&initial, &log_dir);
    let addr = cluster.nodes[killed].addr.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out =
            Command::new(SEAM).args(["--endpoints", &addr, "status", "--json"]).output().expect("status");
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let applied: Vec<u64> = v["nodes"]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n["applied_index"].as_u64()).collect())
                .unwrap_or_default();
            if applied.len() == 3 && applied.iter().min() == applied.iter().max() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the restarted node did not catch up: {}", stdout(&out));
        std::thread::sleep(Duration::from_millis(200));
    }

    // A follower stops cleanly on SIGTERM while the leader replicates to it: its server
    // ends the leader's AppendStream call instead of waiting for it (the node gives its
    // shutdown 10 s, then exits with an error).
    let leader = cluster.leader(Duration::from_secs(30));
    ok(cluster.seam(&["put", "before-stop", "yes"]), "put before the stop");
    let follower = cluster.nodes.iter().position(|n| n.id != leader).expect("a follower");
    let id = cluster.nodes[follower].id;
    let status = cluster.nodes[follower].terminate();
    assert!(status.success(), "node {id} exited with {status:?} after SIGTERM:\n{}", cluster.node_log(id));
}

#[test]
fn nodes_refuse_bad_config_and_foreign_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |args: &[&str]| Command::new(SEAM).arg("node").args(args).output().expect("seam node runs");

    // Fails to start, and says what is wrong.
    let refused = |args: &[&str], names: &str| {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "node started with {args:?}");
        assert!(err.contains(names), "the error for {args:?} names {names:?}: {err}");
    };
    refused(&["--id", "0"], "id");
    refused(&["--id", "1", "--initial-cluster", "1=nonsense"], "initial_cluster");
    refused(&["--id", "1", "--worker-threads", "5000"], "worker_threads");
    refused(&["--id", "1", "--cpu-wakeup-latency-us", "2000000"], "cpu_wakeup_latency_us");
    refused(&["--id", "1", "--cpu-wakeup-latency-us=-1"], "cpu-wakeup-latency-us");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "id = 2\nbogus_field = 1\n").expect("write config");
    refused(&["--config", config.to_str().expect("utf-8 path")], "bogus_field");

    // A data directory of node 1 is refused by node 2, naming both, and left untouched.
    let data = dir.path().join("data");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut first = Command::new(SEAM)
        .args(["node", "--id", "1", "--listen", &listen, "--initial-cluster", &format!("1={listen}")])
        .arg("--data-dir")
        .arg(&data)
        .stderr(Stdio::null())
        .spawn()
        .expect("first node");
    let identity = data.join("IDENTITY");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !identity.exists() {
        assert!(Instant::now() < deadline, "node 1 did not create its data directory");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = first.kill();
    let _ = first.wait();
    let before = std::fs::read(&identity).expect("identity");
    let out = run(&[
        "--id",
        "2",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        data.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success(), "node 2 must refuse node 1's data");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains('1') && err.contains('2'), "the error names both nodes: {err}");
    assert_eq!(std::fs::read(&identity).expect("identity"), before, "nothing was overwritten");
}

#[test]
fn worker_threads_sizes_the_runtime() {
    // A node that ignored the flag would run one thread per core: one of the two cases
    // fails on any machine.
    for (threads, workers) in [(1, 1), (3, 3)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut node = Node::new(1, threads, dir.path().join("data"));
        let addr = node.addr.clone();
        node.spawn(&format!("1={addr}@r1"), dir.path());
        let put = || {
            let args = ["--endpoints", &addr, "--timeout-ms", "3000", "put", "k", "v"];
            Command::new(SEAM).args(args).output().expect("seam runs")
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !put().status.success() {
            assert!(Instant::now() < deadline, "the node on {threads} thread(s) took no write");
            std::thread::sleep(Duration::from_millis(200));
        }
        let get = Command::new(SEAM).args(["--endpoints", &addr, "get", "k"]).output().expect("seam runs");
        assert!(stdout(&get).contains('v'), "read back: {}", stdout(&get));
        let metrics = http_get(&node.metrics, "/metrics");
        let line = format!("seam_runtime_worker_threads {workers}\n");
        assert!(metrics.contains(&line), "--worker-threads {threads}: no {line:?} in\n{metrics}");
    }
}
