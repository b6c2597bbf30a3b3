//! A quick end-to-end check against a running cluster:
//! `cargo run -p seam-client --example smoke -- 127.0.0.1:7001[,more]`.
//!
//! Writes, reads, compare-and-sets and leases one key under `smoke/`, printing each step
//! and its outcome class; exits non-zero on the first unexpected result.

use std::time::Duration;

use seam_client::{Client, ClientConfig, PutOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:7001".into());
    let client = Client::connect(ClientConfig::new(endpoints.split(','))).await?;
    println!("connected; leader {:?}, members {:?}", client.leader(), client.members());

    let written = client.put("smoke/a", "1").await?;
    println!("put smoke/a = 1: {written:?}");
    let got = client.get("smoke/a").await?;
    println!("get smoke/a: {:?} (tier {:?})", got.value().map(String::from_utf8_lossy), got.meta.tier);
    let cas = client.cas("smoke/a", Some(b"1".as_slice()), "2").await?;
    println!("cas 1 -> 2: {cas:?}");
    let cas = client.cas("smoke/a", Some(b"1".as_slice()), "3").await?;
    println!("cas 1 -> 3 (must fail): {cas:?}");

    let guard = client.leases().guard("smoke/lock", "smoke", Duration::from_secs(3)).await?;
    println!("lease token {} valid {}", guard.token(), guard.is_valid());
    let fenced = PutOptions { token: Some(guard.token()), ..Default::default() };
    println!("fenced put: {:?}", client.put_with("smoke/lock", "mine", fenced).await);
    let stale = PutOptions { token: Some(guard.token().saturating_sub(1)), ..Default::default() };
    println!("stale-token put (must be rejected): {:?}", client.put_with("smoke/lock", "old", stale).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("after 2 s (renewed in the background): valid {}", guard.is_valid());
    guard.release().await?;

    let status = client.admin().status_all().await?;
    println!("status: leader {:?}", status.leader_id);
    for node in status.nodes {
        println!("  {} {:?}", node.addr, node.status.map(|s| (s.node_id, s.role, s.term, s.applied_index)));
    }
    Ok(())
}
