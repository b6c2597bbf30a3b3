//! The SDK's relaxed-tier behaviour against a real in-process cluster.

use std::time::Duration;

use seam_client::{Client, ClientConfig, Policy, Tier};
use seam_tests::TestCluster;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// Three nodes in three regions, bootstrapped without `@REGION` in the member list, so the
/// membership knows no regions: each node knows only its own.
async fn cluster_without_member_regions() -> TestCluster {
    TestCluster::start_with(3, |c| {
        c.region = REGIONS[(c.id - 1) as usize].to_string();
        let stripped: Vec<String> = c
            .initial_cluster
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(|m| m.split('@').next().unwrap_or(m).to_string())
            .collect();
        c.initial_cluster = Some(stripped.join(","));
    })
    .await
}

fn config(cluster: &TestCluster, region: &str) -> ClientConfig {
    let mut config = ClientConfig::new(cluster.endpoints()).with_region(region);
    config.request_timeout_ms = 4000;
    config.retries_max = 20;
    config.backoff_max_ms = 500;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_operations_are_served_in_the_clients_region() {
    let cluster = cluster_without_member_regions().await;
    cluster.leader(Duration::from_secs(10)).await;
    let admin = seam_tests::connect(config(&cluster, "")).await;
    admin.policies().set(Policy::relaxed("cart/", 60_000)).await.expect("set policy");

    for region in REGIONS {
        // Like the CLI: a fresh client, its first operation at once.
        let client = Client::new(config(&cluster, region)).expect("client");
        let written = client.put(format!("cart/{region}"), "1").await.expect("put");
        let meta = &written.info().expect("applied").meta;
        assert_eq!(meta.tier, Some(Tier::Relaxed));
        assert_eq!(meta.region, region, "the write was served in the client's region");
        let got = client.get(format!("cart/{region}")).await.expect("get");
        assert_eq!(got.meta.region, region, "the read was served in the client's region");
    }
    cluster.shutdown().await;
}
