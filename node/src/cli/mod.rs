//! The `seam` client subcommands: talk to any cluster through the SDK.
//!
//! [`ClientArgs`] are the global options (`--endpoints`, `--region`, `--json`,
//! `--timeout-ms`; global, so they may come before or after the subcommand), and
//! [`ClientCommand`] the subcommands. Both are designed to be flattened into the binary's
//! top-level parser:
//!
//! ```ignore
//! #[derive(clap::Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     client: seam_node::cli::ClientArgs,
//!     #[command(subcommand)]
//!     command: Command,
//! }
//! #[derive(clap::Subcommand)]
//! enum Command {
//!     Node(NodeArgs),
//!     #[command(flatten)]
//!     Client(seam_node::cli::ClientCommand),
//! }
//! // Command::Client(cmd) => seam_node::cli::run(cli.client, cmd).await
//! ```
//!
//! A subcommand that defines an argument with the same id as a global one (`node
//! --region`, `lease acquire --region`) keeps its own: clap does not propagate a global
//! argument into a command that already has one of that name.
//!
//! Output is readable by default; `--json` prints one JSON object on stdout. Exit codes:
//! 0 success; 1 a definite error (certainly not applied), or a compare-and-set whose
//! expectation did not hold; 2 bad input (usage, txn script, config); 3 an indeterminate
//! error (the write may have been applied). Errors go to stderr as `error: ...` naming the
//! problem (and, with `--json`, also as `{"error": ..., "outcome": ...}` on stdout).

pub mod txn;

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use seam_client::{
    Client, ClientConfig, DeleteOptions, Error, GetOptions, KeyValue, LeaseInfo, LeaseRule, Meta, OpResult,
    Outcome, Policy, PolicyChange, PolicyOutcome, PutOptions, RangeOptions, Tier, Written,
};
use serde_json::{json, Value};

/// Default endpoint list (`--endpoints`, `SEAM_ENDPOINTS`).
pub const ENDPOINTS_DEFAULT: &str = "127.0.0.1:7001";

/// Keys `seam range` prints when `--limit` is not given; past it the output says more
/// keys follow and where to continue.
pub const RANGE_KEYS_DEFAULT: u32 = 1_000;

/// Keys asked for per page by `seam range` (the node may cap it lower).
pub const RANGE_PAGE_KEYS: u32 = 500;

/// Bytes `seam txn` reads from stdin or a file; a longer script is refused.
pub const TXN_SCRIPT_BYTES_MAX: u64 = 1 << 20;

/// Options shared by every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Cluster nodes to contact, comma-separated HOST:PORT; any one reachable node is enough.
    #[arg(long, global = true, env = "SEAM_ENDPOINTS", value_delimiter = ',', default_value = ENDPOINTS_DEFAULT)]
    pub endpoints: Vec<String>,
    /// This client's region (relaxed reads and writes prefer a node there).
    #[arg(long, global = true, default_value = "")]
    pub region: String,
    /// Print one JSON object instead of readable text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Time limit for one request attempt, ms.
    #[arg(long, global = true, env = "SEAM_TIMEOUT_MS", default_value_t = 5_000)]
    pub timeout_ms: u64,
}

/// A tier named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TierArg {
    /// Raft, linearizable.
    Sacred,
    /// The per-region cache.
    Relaxed,
}

impl From<TierArg> for Tier {
    fn from(t: TierArg) -> Tier {
        match t {
            TierArg::Sacred => Tier::Sacred,
            TierArg::Relaxed => Tier::Relaxed,
        }
    }
}

/// A lease rule named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LeaseArg {
    /// Tokens optional.
    None,
    /// Every write needs the live token.
    Required,
}

/// Client subcommands (flatten into the binary's command enum).
#[derive(Debug, Clone, Subcommand)]
pub enum ClientCommand {
    /// Read a key (linearizable for sacred fields unless --max-staleness-ms).
    Get {
        /// The key.
        key: String,
        /// Accept a value at most this old, ms.
        #[arg(long)]
        max_staleness_ms: Option<u64>,
        /// Fail unless the key's field has this tier.
        #[arg(long, value_enum)]
        require: Option<TierArg>,
    },
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Fencing token of the key's lease.
        #[arg(long)]
        token: Option<u64>,
        /// Relaxed fields: time to live, ms.
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// Fail unless the key's field has this tier.
        #[arg(long, value_enum)]
        require: Option<TierArg>,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: String,
        /// Fencing token of the key's lease.
        #[arg(long)]
        token: Option<u64>,
    },
    /// Compare-and-set: write NEW only if KEY holds --expect V (or is absent with
    /// --expect-absent). Exits 1 when the expectation did not hold.
    Cas {
        /// The key.
        key: String,
        /// The value the key must hold.
        #[arg(long, conflicts_with = "expect_absent", required_unless_present = "expect_absent")]
        expect: Option<String>,
        /// The key must not exist.
        #[arg(long)]
        expect_absent: bool,
        /// The new value.
        new: String,
    },
    /// Run a transaction read from stdin (or --file). One statement per line:
    /// `compare value|version|mod|create|token KEY =|!=|>|< X`, `compare exists|absent KEY`,
    /// `success|failure put KEY VALUE [token=N]`, `success|failure del KEY [token=N]`,
    /// `success|failure get KEY`. '#' starts a comment; quote words with spaces.
    Txn {
        /// Read the script from this file instead of stdin.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// List keys from START (to END, exclusive) or with the prefix START.
    Range {
        /// First key (or the prefix with --prefix).
        start: String,
        /// End key, exclusive.
        end: Option<String>,
        /// Every key starting with START.
        #[arg(long, conflicts_with = "end")]
        prefix: bool,
        /// Print at most N keys (default 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Every member's view: id, region, address, role, leader, term, commit and applied index.
    Status,
    /// Membership changes.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Single-writer leases with fencing tokens.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Field policies (which tier serves which key prefix).
    #[command(subcommand)]
    Policy(PolicyCommand),
}

/// `seam member ...`
#[derive(Debug, Clone, Subcommand)]
pub enum MemberCommand {
    /// Add a node as a non-voting learner.
    AddLearner {
        /// The new node's id.
        id: u64,
        /// Its address (HOST:PORT).
        addr: String,
        /// Its region.
        #[arg(long)]
        region: String,
    },
    /// Make learners voters.
    Promote {
        /// Node ids.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Remove members.
    Remove {
        /// Node ids.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
}

/// `seam lease ...`
#[derive(Debug, Clone, Subcommand)]
pub enum LeaseCommand {
    /// Acquire a lease; prints its fencing token.
    Acquire {
        /// The key.
        key: String,
        /// The holder's name.
        #[arg(long)]
        holder: String,
        /// The holder's region (default: the global --region).
        #[arg(long)]
        region: Option<String>,
        /// Time to live, ms.
        #[arg(long)]
        ttl_ms: u64,
    },
    /// Extend a lease by its TTL.
    Renew {
        /// The key.
        key: String,
        /// Its token.
        #[arg(long)]
        token: u64,
    },
    /// Give a lease up.
    Release {
        /// The key.
        key: String,
        /// Its token.
        #[arg(long)]
        token: u64,
    },
    /// Hand a lease to another holder (a planned move).
    Transfer {
        /// The key.
        key: String,
        /// Its token.
        #[arg(long)]
        token: u64,
        /// The new holder.
        #[arg(long)]
        to: String,
        /// The new holder's region.
        #[arg(long)]
        to_region: String,
    },
    /// List live leases.
    List {
        /// Only keys with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only leases held in this region.
        #[arg(long)]
        region: Option<String>,
    },
}

/// `seam policy ...`
#[derive(Debug, Clone, Subcommand)]
pub enum PolicyCommand {
    /// Set a field's policy.
    Set {
        /// The key prefix.
        prefix: String,
        /// sacred or relaxed.
        #[arg(long, value_enum)]
        tier: TierArg,
        /// Relaxed: hot (5 s), warm (60 s), cold (1 h), or a duration like 250ms, 30s, 5m, 2h.
        #[arg(long, value_parser = staleness_arg)]
        staleness: Option<u64>,
        /// Relaxed: default time to live of values, ms.
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// Whether writes need the key's live lease token.
        #[arg(long, value_enum, default_value = "none")]
        lease: LeaseArg,
    },
    /// Every policy.
    List,
    /// Sacred -> relaxed, seeded with the current values.
    Demote {
        /// The key prefix.
        prefix: String,
        /// hot, warm, cold, or a duration.
        #[arg(long, value_parser = staleness_arg)]
        staleness: u64,
        /// Default time to live of values, ms.
        #[arg(long)]
        ttl_ms: Option<u64>,
    },
    /// Relaxed -> sacred, writing converged values through Raft first.
    Promote {
        /// The key prefix.
        prefix: String,
    },
    /// Policy changes, oldest first.
    History {
        /// Only this field's changes.
        prefix: Option<String>,
    },
    /// Put a field back as it was before its last change.
    Revert {
        /// The key prefix.
        prefix: String,
    },
}

fn staleness_arg(text: &str) -> Result<u64, String> {
    seam_client::parse_staleness(text)
}

/// A command's failure, with its exit code.
struct Failure {
    code: u8,
    message: String,
    outcome: Option<Outcome>,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let outcome = e.outcome();
        let code = match (&e, outcome) {
            (_, Outcome::Indeterminate) => 3,
            (Error::InvalidArgument { .. }, _) => 2,
            _ => 1,
        };
        Failure { code, message: e.to_string(), outcome: Some(outcome) }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into(), outcome: None }
}

/// What a command prints on success.
struct Output {
    text: String,
    json: Value,
    /// Non-zero for a successful call whose answer is "no" (a failed compare-and-set).
    code: u8,
}

impl Output {
    fn new(text: impl Into<String>, json: Value) -> Output {
        Output { text: text.into(), json, code: 0 }
    }
}

/// Runs one client command and prints its result. Returns the process exit code; an `Err`
/// only for failures to print.
pub async fn run(args: ClientArgs, cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let result = match connect(&args) {
        Ok(client) => execute(&client, &args, cmd).await,
        Err(f) => Err(f),
    };
    match result {
        Ok(output) => {
            if json {
                println!("{}", serde_json::to_string(&output.json)?);
            } else if !output.text.is_empty() {
                println!("{}", output.text);
            }
            Ok(ExitCode::from(output.code))
        }
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            if json {
                let outcome = match failure.outcome {
                    Some(Outcome::Indeterminate) => "indeterminate",
                    _ => "definite",
                };
                println!("{}", json!({ "error": failure.message, "outcome": outcome }));
            }
            Ok(ExitCode::from(failure.code))
        }
    }
}

fn connect(args: &ClientArgs) -> Result<Client, Failure> {
    let config = ClientConfig {
        endpoints: args.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect(),
        region: args.region.clone(),
        request_timeout_ms: args.timeout_ms,
        connect_timeout_ms: args.timeout_ms.clamp(1, 1_000),
        ..ClientConfig::default()
    };
    Client::new(config).map_err(|e| usage(format!("bad client options: {e}")))
}

async fn execute(client: &Client, args: &ClientArgs, cmd: ClientCommand) -> Result<Output, Failure> {
    match cmd {
        ClientCommand::Get { key, max_staleness_ms, require } => {
            let options = GetOptions {
                max_staleness: max_staleness_ms.map(Duration::from_millis),
                require: require.map(Tier::from),
            };
            let got = client.get_with(&key, options).await?;
            let text = match &got.kv {
                Some(kv) => lossy(&kv.value),
                None => format!("(absent: {key})"),
            };
            let mut value = json!({
                "key": key,
                "found": got.kv.is_some(),
                "value": got.kv.as_ref().map(|kv| lossy(&kv.value)),
                "meta": meta_json(&got.meta),
                "from_session": got.from_session,
            });
            if let Some(kv) = &got.kv {
                value["kv"] = kv_json(kv);
            }
            if got.meta.tier == Some(Tier::Relaxed) {
                value["age_ms"] = json!(got.age_ms);
                value["origin_node"] = json!(got.origin_node);
            }
            Ok(Output::new(text, value))
        }
        ClientCommand::Put { key, value, token, ttl_ms, require } => {
            let options = PutOptions {
                token,
                ttl: ttl_ms.map(Duration::from_millis),
                require: require.map(Tier::from),
            };
            let written = client.put_with(&key, &value, options).await?;
            written_output(client, args, "put", &key, written).await
        }
        ClientCommand::Del { key, token } => {
            let written = client.delete_with(&key, DeleteOptions { token, require: None }).await?;
            written_output(client, args, "del", &key, written).await
        }
        ClientCommand::Cas { key, expect, expect_absent: _, new } => {
            let result = client.cas(&key, expect.as_deref().map(str::as_bytes), &new).await?;
            let current = result.current.as_ref().map(|kv| lossy(&kv.value));
            let text = if result.succeeded {
                format!("OK (revision {})", result.revision)
            } else {
                match &current {
                    Some(v) => format!("FAILED: {key} holds {v:?}"),
                    None => format!("FAILED: {key} is absent"),
                }
            };
            let mut out = Output::new(
                text,
                json!({ "key": key, "succeeded": result.succeeded, "revision": result.revision, "current": current }),
            );
            out.code = if result.succeeded { 0 } else { 1 };
            Ok(out)
        }
        ClientCommand::Txn { file } => {
            let script = read_script(file.as_deref())?;
            let parsed = txn::parse(&script).map_err(usage)?;
            if parsed.is_empty() {
                return Err(usage("the transaction script has no statements"));
            }
            let result = client.txn(parsed).await?;
            let mut lines =
                vec![if result.succeeded { "SUCCEEDED".to_string() } else { "FAILED".to_string() }];
            let mut results = Vec::new();
            for r in &result.results {
                match r {
                    OpResult::Get(Some(kv)) => {
                        lines.push(format!("get {} = {}", lossy(&kv.key), lossy(&kv.value)));
                        results.push(json!({ "op": "get", "kv": kv_json(kv) }));
                    }
                    OpResult::Get(None) => {
                        lines.push("get (absent)".to_string());
                        results.push(json!({ "op": "get", "kv": null }));
                    }
                    OpResult::Put { existed } => {
                        lines.push(format!("put ok (existed: {existed})"));
                        results.push(json!({ "op": "put", "existed": existed }));
                    }
                    OpResult::Delete { existed } => {
                        lines.push(format!("del ok (existed: {existed})"));
                        results.push(json!({ "op": "del", "existed": existed }));
                    }
                }
            }
            Ok(Output::new(
                lines.join("\n"),
                json!({ "succeeded": result.succeeded, "revision": result.revision, "results": results }),
            ))
        }
        ClientCommand::Range { start, end, prefix, limit } => range(client, start, end, prefix, limit).await,
        ClientCommand::Status => status(client).await,
        ClientCommand::Member(cmd) => member(client, cmd).await,
        ClientCommand::Lease(cmd) => lease(client, args, cmd).await,
        ClientCommand::Policy(cmd) => policy(client, cmd).await,
    }
}

/// Prints a write's result. A CLI process cannot keep an offline queue alive, so a write
/// that was queued (no node reachable) is waited for up to the timeout, else reported as
/// not applied.
async fn written_output(
    client: &Client,
    args: &ClientArgs,
    op: &str,
    key: &str,
    written: Written,
) -> Result<Output, Failure> {
    if let Written::Queued { .. } = written {
        let deadline = Instant::now() + Duration::from_millis(args.timeout_ms);
        while client.offline_queue_depth() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if client.offline_queue_depth() > 0 {
            return Err(Failure {
                code: 1,
                message: format!("{op} {key}: no node reachable; the write was not applied"),
                outcome: Some(Outcome::Definite),
            });
        }
        if let Some(rejection) = client.offline_rejections().into_iter().next() {
            return Err(rejection.error.into());
        }
        return Ok(Output::new("OK", json!({ "key": key, "applied": true })));
    }
    let info = written.info().cloned();
    let Some(info) = info else { return Ok(Output::new("OK", json!({ "key": key, "applied": true }))) };
    let tier = info.meta.tier.map(|t| t.to_string()).unwrap_or_else(|| "unknown".into());
    let mut text = match info.meta.tier {
        Some(Tier::Relaxed) => format!("OK ({tier}, node {})", info.meta.node_id),
        _ => format!("OK ({tier}, revision {})", info.revision),
    };
    if op == "del" && info.existed == Some(false) {
        text.push_str(&format!("; {key} did not exist"));
    }
    let mut value = json!({
        "key": key,
        "applied": true,
        "revision": info.revision,
        "meta": meta_json(&info.meta),
    });
    if let Some(hlc) = info.hlc {
        value["hlc"] = json!({ "physical_ms": hlc.physical_ms, "logical": hlc.logical, "node": hlc.node });
    }
    if let Some(existed) = info.existed {
        value["existed"] = json!(existed);
    }
    Ok(Output::new(text, value))
}

fn read_script(file: Option<&std::path::Path>) -> Result<String, Failure> {
    let mut script = String::new();
    let read = match file {
        Some(path) => std::fs::File::open(path)
            .map_err(|e| usage(format!("opening {}: {e}", path.display())))?
            .take(TXN_SCRIPT_BYTES_MAX + 1)
            .read_to_string(&mut script),
        None => std::io::stdin().take(TXN_SCRIPT_BYTES_MAX + 1).read_to_string(&mut script),
    };
    read.map_err(|e| usage(format!("reading the transaction script: {e}")))?;
    if script.len() as u64 > TXN_SCRIPT_BYTES_MAX {
        return Err(usage(format!("the transaction script exceeds {TXN_SCRIPT_BYTES_MAX} bytes")));
    }
    Ok(script)
}

async fn range(
    client: &Client,
    start: String,
    end: Option<String>,
    prefix: bool,
    limit: Option<u32>,
) -> Result<Output, Failure> {
    let keys_max = limit.unwrap_or(RANGE_KEYS_DEFAULT) as usize;
    let prefix_bytes = start.as_bytes().to_vec();
    let prefix_end = seam_client::kv::prefix_end(&prefix_bytes);
    let mut next = prefix_bytes.clone();
    let mut kvs: Vec<KeyValue> = Vec::new();
    let mut more = false;
    let mut next_start = Vec::new();
    // Each page returns at least one key or ends the loop, so keys_max bounds the pages;
    // the counter guards against a node that answers `more` with empty pages.
    let mut pages = 0usize;
    let pages_max = keys_max + 1;
    while kvs.len() < keys_max && pages < pages_max {
        pages += 1;
        let remaining = (keys_max - kvs.len()).min(RANGE_PAGE_KEYS as usize) as u32;
        let first = next == prefix_bytes;
        let options = RangeOptions {
            end: if prefix && !first { prefix_end.clone() } else { end.clone().map(String::into_bytes) },
            prefix: prefix && first,
            limit: remaining,
            max_staleness: None,
        };
        let page = client.range(&next, options).await?;
        let empty = page.kvs.is_empty();
        kvs.extend(page.kvs);
        more = page.more;
        next_start = page.next_start;
        if !more || next_start.is_empty() || empty {
            break;
        }
        next = next_start.clone();
    }
    if kvs.len() > keys_max {
        more = true;
        next_start = kvs[keys_max].key.clone();
        kvs.truncate(keys_max);
    }
    let mut lines: Vec<String> =
        kvs.iter().map(|kv| format!("{} = {}", lossy(&kv.key), lossy(&kv.value))).collect();
    if more {
        lines.push(format!("... more keys follow from {:?} (raise --limit to see them)", lossy(&next_start)));
    }
    let json = json!({
        "kvs": kvs.iter().map(kv_json).collect::<Vec<_>>(),
        "more": more,
        "next_start": more.then(|| lossy(&next_start)),
    });
    Ok(Output::new(lines.join("\n"), json))
}

async fn status(client: &Client) -> Result<Output, Failure> {
    let status = client.admin().status_all().await?;
    let mut lines = vec![format!(
        "{:<4} {:<10} {:<22} {:<10} {:<6} {:>6} {:>10} {:>10}",
        "ID", "REGION", "ADDR", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED"
    )];
    let mut nodes = Vec::new();
    for node in &status.nodes {
        match &node.status {
            Ok(s) => {
                lines.push(format!(
                    "{:<4} {:<10} {:<22} {:<10} {:<6} {:>6} {:>10} {:>10}",
                    s.node_id,
                    s.region,
                    node.addr,
                    s.role,
                    if s.leader_id == 0 { "-".to_string() } else { s.leader_id.to_string() },
                    s.term,
                    s.commit_index,
                    s.applied_index
                ));
                nodes.push(json!({
                    "id": s.node_id,
                    "region": s.region,
                    "addr": node.addr,
                    "role": s.role,
                    "leader": s.leader_id,
                    "term": s.term,
                    "last_log_index": s.last_log_index,
                    "commit_index": s.commit_index,
                    "applied_index": s.applied_index,
                    "snapshot_index": s.snapshot_index,
                    "purged_index": s.purged_index,
                    "membership_changing": s.membership_changing,
                    "reachable": true,
                }));
            }
            Err(e) => {
                let id = node.id.map(|i| i.to_string()).unwrap_or_else(|| "?".into());
                lines.push(format!("{id:<4} {:<10} {:<22} unreachable: {e}", "", node.addr));
                nodes.push(
                    json!({ "id": node.id, "addr": node.addr, "reachable": false, "error": e.to_string() }),
                );
            }
        }
    }
    lines.push(match status.leader_id {
        Some(id) => format!("leader: {id}"),
        None => "leader: none known".into(),
    });
    Ok(Output::new(lines.join("\n"), json!({ "leader": status.leader_id, "nodes": nodes })))
}

async fn member(client: &Client, cmd: MemberCommand) -> Result<Output, Failure> {
    let admin = client.admin();
    let membership = match cmd {
        MemberCommand::AddLearner { id, addr, region } => admin.add_learner(id, &addr, &region).await?,
        MemberCommand::Promote { ids } => admin.promote(&ids).await?,
        MemberCommand::Remove { ids } => admin.remove(&ids).await?,
    };
    let mut lines = vec![format!("membership at revision {}:", membership.revision)];
    let mut members = Vec::new();
    for m in &membership.members {
        let role = if m.voter { "voter" } else { "learner" };
        lines.push(format!("  {} {} {} {}", m.id, m.addr, m.region, role));
        members.push(json!({ "id": m.id, "addr": m.addr, "region": m.region, "voter": m.voter }));
    }
    Ok(Output::new(lines.join("\n"), json!({ "revision": membership.revision, "members": members })))
}

async fn lease(client: &Client, args: &ClientArgs, cmd: LeaseCommand) -> Result<Output, Failure> {
    let leases = client.leases();
    let describe = |verb: &str, l: &LeaseInfo| {
        Output::new(
            format!(
                "{verb} {}: token {} holder {} region {} ttl {} ms (expires at {} ms)",
                lossy(&l.key),
                l.token,
                l.holder,
                l.region,
                l.ttl_ms,
                l.expires_ms
            ),
            lease_json(l),
        )
    };
    match cmd {
        LeaseCommand::Acquire { key, holder, region, ttl_ms } => {
            let region = region.unwrap_or_else(|| args.region.clone());
            let lease = leases.acquire(&key, &holder, &region, Duration::from_millis(ttl_ms)).await?;
            Ok(describe("acquired", &lease))
        }
        LeaseCommand::Renew { key, token } => Ok(describe("renewed", &leases.renew(&key, token).await?)),
        LeaseCommand::Release { key, token } => {
            leases.release(&key, token).await?;
            Ok(Output::new(format!("released {key}"), json!({ "key": key, "released": true })))
        }
        LeaseCommand::Transfer { key, token, to, to_region } => {
            Ok(describe("transferred", &leases.transfer(&key, token, &to, &to_region).await?))
        }
        LeaseCommand::List { prefix, region } => {
            let list = leases.list(&prefix, region.as_deref(), 0).await?;
            let mut lines: Vec<String> = list
                .leases
                .iter()
                .map(|l| {
                    format!(
                        "{} token {} holder {} region {} expires in {} ms",
                        lossy(&l.key),
                        l.token,
                        l.holder,
                        l.region,
                        l.expires_ms.saturating_sub(list.now_ms)
                    )
                })
                .collect();
            if lines.is_empty() {
                lines.push("(no live leases)".into());
            }
            let json = json!({ "now_ms": list.now_ms, "leases": list.leases.iter().map(lease_json).collect::<Vec<_>>() });
            Ok(Output::new(lines.join("\n"), json))
        }
    }
}

async fn policy(client: &Client, cmd: PolicyCommand) -> Result<Output, Failure> {
    let policies = client.policies();
    let outcome = match cmd {
        PolicyCommand::Set { prefix, tier, staleness, ttl_ms, lease } => {
            let tier = Tier::from(tier);
            if tier == Tier::Relaxed && staleness.is_none() {
                return Err(usage(
                    "--staleness is required with --tier relaxed (hot, warm, cold, or a duration)",
                ));
            }
            if tier == Tier::Sacred && (staleness.is_some() || ttl_ms.is_some()) {
                return Err(usage("--staleness and --ttl-ms apply only to --tier relaxed"));
            }
            let policy = Policy {
                prefix: prefix.into_bytes(),
                tier,
                staleness_ms: staleness.unwrap_or(0),
                ttl_ms: ttl_ms.unwrap_or(0),
                lease: match lease {
                    LeaseArg::None => LeaseRule::None,
                    LeaseArg::Required => LeaseRule::Required,
                },
                revision: 0,
            };
            policies.set(policy).await?
        }
        PolicyCommand::List => {
            let list = policies.list().await?;
            let mut lines: Vec<String> = list.iter().map(describe_policy).collect();
            if lines.is_empty() {
                lines.push("(no policies: every key is sacred)".into());
            }
            let json = json!({ "policies": list.iter().map(policy_json).collect::<Vec<_>>() });
            return Ok(Output::new(lines.join("\n"), json));
        }
        PolicyCommand::Demote { prefix, staleness, ttl_ms } => {
            policies
                .demote(&prefix, Duration::from_millis(staleness), ttl_ms.map(Duration::from_millis))
                .await?
        }
        PolicyCommand::Promote { prefix } => policies.promote(&prefix).await?,
        PolicyCommand::History { prefix } => {
            let changes = policies.history(prefix.as_deref().map(str::as_bytes)).await?;
            let mut lines: Vec<String> = changes.iter().map(describe_change).collect();
            if lines.is_empty() {
                lines.push("(no policy changes)".into());
            }
            let json = json!({ "changes": changes.iter().map(change_json).collect::<Vec<_>>() });
            return Ok(Output::new(lines.join("\n"), json));
        }
        PolicyCommand::Revert { prefix } => policies.revert(&prefix).await?,
    };
    Ok(policy_outcome(&outcome))
}

fn policy_outcome(outcome: &PolicyOutcome) -> Output {
    let mut lines = Vec::new();
    if let Some(change) = &outcome.change {
        lines.push(describe_change(change));
    }
    lines.push(format!("every node serves the new policy after {} ms", outcome.propagation_ms));
    if !outcome.lagging_nodes.is_empty() {
        lines.push(format!("not yet confirmed by nodes {:?}", outcome.lagging_nodes));
    }
    if !outcome.contested_keys.is_empty() {
        let keys: Vec<String> = outcome.contested_keys.iter().map(|k| lossy(k)).collect();
        lines.push(format!("contested keys ({}): {}", keys.len(), keys.join(", ")));
    }
    let json = json!({
        "change": outcome.change.as_ref().map(change_json),
        "propagation_ms": outcome.propagation_ms,
        "lagging_nodes": outcome.lagging_nodes,
        "contested_keys": outcome.contested_keys.iter().map(|k| lossy(k)).collect::<Vec<_>>(),
    });
    Output::new(lines.join("\n"), json)
}

fn describe_policy(p: &Policy) -> String {
    let mut text = format!("{:?} {}", lossy(&p.prefix), p.tier);
    if p.tier == Tier::Relaxed {
        text.push_str(&format!(" staleness {} ms", p.staleness_ms));
        if p.ttl_ms > 0 {
            text.push_str(&format!(" ttl {} ms", p.ttl_ms));
        }
    }
    if p.lease == LeaseRule::Required {
        text.push_str(" lease required");
    }
    text
}

fn describe_change(c: &PolicyChange) -> String {
    let side = |p: &Option<Policy>| match p {
        Some(p) => describe_policy(p),
        None => "(none)".into(),
    };
    format!("revision {}: {:?}: {} -> {}", c.revision, lossy(&c.prefix), side(&c.before), side(&c.after))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": lossy(&kv.key),
        "value": lossy(&kv.value),
        "version": kv.version,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "token": kv.token,
    })
}

fn meta_json(meta: &Meta) -> Value {
    json!({
        "node_id": meta.node_id,
        "region": meta.region,
        "leader_id": meta.leader_id,
        "term": meta.term,
        "revision": meta.revision,
        "tier": meta.tier.map(|t| t.to_string()),
        "field": lossy(&meta.field),
    })
}

fn lease_json(l: &LeaseInfo) -> Value {
    json!({
        "key": lossy(&l.key),
        "holder": l.holder,
        "region": l.region,
        "token": l.token,
        "ttl_ms": l.ttl_ms,
        "granted_ms": l.granted_ms,
        "expires_ms": l.expires_ms,
    })
}

fn policy_json(p: &Policy) -> Value {
    json!({
        "prefix": lossy(&p.prefix),
        "tier": p.tier.to_string(),
        "staleness_ms": p.staleness_ms,
        "ttl_ms": p.ttl_ms,
        "lease": match p.lease { LeaseRule::None => "none", LeaseRule::Required => "required" },
        "revision": p.revision,
    })
}

fn change_json(c: &PolicyChange) -> Value {
    json!({
        "revision": c.revision,
        "stamp_ms": c.stamp_ms,
        "prefix": lossy(&c.prefix),
        "before": c.before.as_ref().map(policy_json),
        "after": c.after.as_ref().map(policy_json),
    })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// A stand-in for the binary's parser, with a `node` subcommand that has its own
    /// `--region`, as the real one does.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, Subcommand)]
    enum Command {
        Node {
            #[arg(long)]
            region: Option<String>,
        },
        #[command(flatten)]
        Client(ClientCommand),
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn the_parser_is_consistent_when_flattened() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let cli = parse(&["seam", "--endpoints", "a:1,b:2", "status", "--json"]);
        assert_eq!(cli.client.endpoints, vec!["a:1", "b:2"]);
        assert!(cli.client.json);
        assert!(matches!(cli.command, Command::Client(ClientCommand::Status)));
        let cli = parse(&["seam", "put", "k", "v", "--token", "7", "--endpoints", "c:3"]);
        assert_eq!(cli.client.endpoints, vec!["c:3"]);
        assert!(matches!(cli.command, Command::Client(ClientCommand::Put { token: Some(7), .. })));
        let cli = parse(&["seam", "node", "--region", "eu"]);
        assert!(matches!(cli.command, Command::Node { region: Some(ref r) } if r == "eu"));
    }

    #[test]
    fn lease_and_policy_commands_parse() {
        let cli = parse(&[
            "seam", "lease", "acquire", "k", "--holder", "h", "--region", "us", "--ttl-ms", "500", "--json",
        ]);
        match cli.command {
            Command::Client(ClientCommand::Lease(LeaseCommand::Acquire { region, ttl_ms, .. })) => {
                assert_eq!(region.as_deref(), Some("us"));
                assert_eq!(ttl_ms, 500);
            }
            other => panic!("{other:?}"),
        }
        assert!(cli.client.json);
        let cli = parse(&["seam", "policy", "set", "cart/", "--tier", "relaxed", "--staleness", "warm"]);
        assert!(matches!(
            cli.command,
            Command::Client(ClientCommand::Policy(PolicyCommand::Set { staleness: Some(60_000), .. }))
        ));
        let cli = parse(&["seam", "policy", "demote", "cart/", "--staleness", "250ms"]);
        assert!(matches!(
            cli.command,
            Command::Client(ClientCommand::Policy(PolicyCommand::Demote { staleness: 250, .. }))
        ));
        assert!(Cli::try_parse_from(["seam", "policy", "demote", "x", "--staleness", "soon"]).is_err());
        let cli = parse(&["seam", "cas", "k", "--expect-absent", "new"]);
        assert!(matches!(
            cli.command,
            Command::Client(ClientCommand::Cas { expect: None, expect_absent: true, .. })
        ));
        assert!(Cli::try_parse_from(["seam", "cas", "k", "new"]).is_err(), "an expectation is required");
        let cli = parse(&["seam", "member", "add-learner", "4", "h:4", "--region", "ap"]);
        assert!(matches!(
            cli.command,
            Command::Client(ClientCommand::Member(MemberCommand::AddLearner { id: 4, .. }))
        ));
    }
}
