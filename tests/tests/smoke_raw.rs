//! The cluster answers raw gRPC: writes through any node (followers forward), and
//! linearizable reads on every node. Uses the generated client only, so it exercises the
//! node without the SDK's retries.

use std::time::Duration;

use seam_proto::v1 as pb;
use seam_proto::v1::kv_client::KvClient;
use seam_tests::TestCluster;

fn header(request_id: u64) -> Option<pb::RequestHeader> {
    Some(pb::RequestHeader { client_id: "raw".into(), request_id, ..Default::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_and_reads_everywhere() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");

    let mut via_follower =
        KvClient::connect(format!("http://{}", cluster.addrs[&follower])).await.expect("connect");
    let put = via_follower
        .put(pb::PutRequest {
            header: header(1),
            key: b"k".to_vec(),
            value: b"v1".to_vec(),
            ..Default::default()
        })
        .await
        .expect("put via follower is forwarded")
        .into_inner();
    assert!(put.revision > 0);

    // A retry with the same request id is answered with the original revision.
    let again = via_follower
        .put(pb::PutRequest {
            header: header(1),
            key: b"k".to_vec(),
            value: b"v1".to_vec(),
            ..Default::default()
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again.revision, put.revision);

    for id in cluster.running() {
        let mut c = KvClient::connect(format!("http://{}", cluster.addrs[&id])).await.expect("connect");
        let got = c
            .get(pb::GetRequest { key: b"k".to_vec(), ..Default::default() })
            .await
            .unwrap_or_else(|s| panic!("get on node {id}: {s}"))
            .into_inner();
        let kv = got.kv.expect("value present");
        assert_eq!((kv.value.as_slice(), kv.version), (&b"v1"[..], 1), "node {id}");
    }

    // Oversized keys are refused, naming the limit.
    let err = via_follower
        .put(pb::PutRequest { header: header(2), key: vec![b'x'; 5000], value: vec![], ..Default::default() })
        .await
        .expect_err("too large");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("key_bytes_max"), "{}", err.message());
    cluster.shutdown().await;
}
