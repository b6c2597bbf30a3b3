//! Fencing an external system with a Seam lease token: a job runner whose output goes to an
//! object store that checks the token. The worked example of `docs/leases.md`.
//!
//! `cargo run -p seam-client --example fenced_job -- 127.0.0.1:7001[,more]`
//!
//! Two workers run the same nightly job. Worker A acquires the lease and writes the first
//! part of the report, then stalls past its TTL without renewing (a long GC pause, a stopped
//! VM). Worker B acquires the lease, with a larger token, and runs the whole job. Worker A
//! wakes up and carries on with its old token: the object store refuses its write, and Seam
//! refuses its commit. The report that ends up committed is B's, complete.
//!
//! The commit is a fenced write of the leased key itself (`jobs/nightly`): a token fences
//! its own key. To commit to other keys, make the write a transaction that compares the
//! lease's token (`Cmp::lease_token`).
//!
//! The object store is a directory with the one rule an external system needs to be fenced:
//! it remembers the largest token seen for each fencing domain (here the job: every object
//! the job writes) and refuses smaller ones, checked and recorded atomically with the write
//! (here under a mutex; in a database, in the same transaction or conditional update).
//! Keeping the token per domain rather than per object matters: per object, worker A could
//! still create an object worker B has not written yet.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use seam_client::{Client, ClientConfig, Error, PutOptions};

/// The lease's time to live.
const TTL: Duration = Duration::from_millis(2000);

/// An object store that refuses writes carrying a token older than the largest one its
/// fencing domain has seen.
struct FencedStore {
    dir: PathBuf,
    /// Largest token seen per fencing domain. A real store keeps this in a row or object of
    /// its own and checks it in the same atomic step as the write.
    tokens: Mutex<BTreeMap<String, u64>>,
}

#[derive(Debug)]
struct Refused {
    presented: u64,
    highest: u64,
}

impl FencedStore {
    fn put(&self, domain: &str, name: &str, data: &str, token: u64) -> Result<(), Refused> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let highest = tokens.get(domain).copied().unwrap_or(0);
        if token < highest {
            return Err(Refused { presented: token, highest });
        }
        // Write then rename: readers see the old object or the new one, never half.
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, data).and_then(|_| std::fs::rename(&tmp, &path)).expect("write object");
        tokens.insert(domain.to_string(), token);
        Ok(())
    }
}

struct Log(Instant);

impl Log {
    fn say(&self, who: &str, what: impl std::fmt::Display) {
        println!("{:>6} ms  {who}: {what}", self.0.elapsed().as_millis());
    }
}

/// Worker A: acquires, writes part 1, stalls past its TTL, then carries on as if nothing
/// happened. (A `LeaseGuard` would have told it `is_valid() == false` on waking; A ignores
/// it, as a buggy or unlucky worker does. Fencing does not depend on A behaving.)
async fn worker_a(client: &Client, store: &FencedStore, log: &Log) -> Result<(), Error> {
    let lease = client.leases().acquire("jobs/nightly", "worker-a", "eu-west", TTL).await?;
    log.say("worker-a", format!("acquired jobs/nightly, token {}", lease.token));
    store
        .put("jobs/nightly", "report-part-1", "A's part 1", lease.token)
        .expect("A writes while it holds the lease");
    log.say("worker-a", "wrote report-part-1");

    log.say("worker-a", format!("stalls for {} ms, longer than its ttl", TTL.as_millis() + 1000));
    tokio::time::sleep(TTL + Duration::from_millis(1000)).await;

    match store.put("jobs/nightly", "report-part-2", "A's part 2", lease.token) {
        Ok(()) => log.say("worker-a", "wrote report-part-2 (the store does not fence!)"),
        Err(r) => log.say(
            "worker-a",
            format!("object store refused report-part-2: token {} < {}", r.presented, r.highest),
        ),
    }
    let commit = PutOptions { token: Some(lease.token), ..Default::default() };
    match client.put_with("jobs/nightly", "report by worker-a", commit).await {
        Ok(_) => log.say("worker-a", "committed (Seam did not fence!)"),
        Err(e) => log.say("worker-a", format!("Seam refused the commit: {e}")),
    }
    Ok(())
}

/// Worker B: waits for the lease, runs the job with its token, commits, releases.
async fn worker_b(client: &Client, store: &FencedStore, log: &Log) -> Result<(), Error> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let guard = loop {
        match client.leases().guard("jobs/nightly", "worker-b", TTL).await {
            Ok(guard) => break guard,
            Err(Error::LeaseHeld { holder, token }) => {
                log.say("worker-b", format!("lease held by {holder} (token {token}); waiting"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let token = guard.token();
    log.say("worker-b", format!("acquired jobs/nightly, token {token}"));
    for part in ["report-part-1", "report-part-2"] {
        if !guard.is_valid() {
            log.say("worker-b", "lease lost; stopping");
            return Ok(());
        }
        store.put("jobs/nightly", part, &format!("B's {part}"), token).expect("B holds the newest token");
        log.say("worker-b", format!("wrote {part}"));
    }
    let commit = PutOptions { token: Some(token), ..Default::default() };
    client.put_with("jobs/nightly", "report by worker-b", commit).await?;
    log.say("worker-b", "committed: jobs/nightly = report by worker-b");
    // Hold on until A has tried its stale writes, then let go.
    tokio::time::sleep(TTL).await;
    guard.release().await?;
    log.say("worker-b", "released");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7001".into());
    let in_region =
        |region: &str| Client::connect(ClientConfig::new(endpoints.split(',')).with_region(region));
    let (client_a, client_b) = (in_region("eu-west").await?, in_region("us-east").await?);
    let dir = std::env::temp_dir().join(format!("seam-fenced-job-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = FencedStore { dir: dir.clone(), tokens: Mutex::default() };
    let log = Log(Instant::now());

    let (a, b) = tokio::join!(worker_a(&client_a, &store, &log), worker_b(&client_b, &store, &log));
    a?;
    b?;

    for part in ["report-part-1", "report-part-2"] {
        println!("{part}: {}", std::fs::read_to_string(dir.join(part))?);
    }
    let output = client_a.get("jobs/nightly").await?.kv.map(|kv| (kv.value, kv.token));
    if let Some((value, token)) = output {
        println!("jobs/nightly: {} (written with token {token})", String::from_utf8_lossy(&value));
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
