//! openraft's network over tonic: AppendEntries (on one long-lived `AppendStream` call per
//! peer, see `Network::call`), Vote and InstallSnapshot (in chunks).
//!
//! openraft's request and response types travel bincode-encoded inside a `RaftMessage`;
//! both ends run the same build. The receiving side is [`crate::service::raft`]. The
//! remote's answer is a `Result<Resp, RaftError>`, so a refusal by the remote Raft (a
//! higher vote, say) reaches openraft as a `RemoteError`, while transport failures reach
//! it as `Unreachable` (openraft then backs off) or `Timeout`.

use std::time::Duration;

use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use seam_client::transport::BidiStream;
use seam_client::transport::Conn;
use seam_proto::v1::raft_client::RaftClient;
use seam_proto::v1::raft_server;
use seam_proto::v1::RaftMessage;
use seam_raft_storage::Node;
use seam_raft_storage::NodeId;
use seam_raft_storage::TypeConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::peer::Peers;

/// Builds one [`Network`] per target for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    pub peers: Peers,
    /// Bytes of one Raft message at most, both ways.
    pub message_bytes_max: usize,
    /// This node's region.
    pub region: String,
    /// Simulated latency to peers in other regions (see `NetworkSection`).
    pub inter_region_delay_ms: u64,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Network {
        if self.inter_region_delay_ms > 0 && !node.region.is_empty() && node.region != self.region {
            self.peers.faults.set_delay_ms(target, self.inter_region_delay_ms);
        }
        Network {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            message_bytes_max: self.message_bytes_max,
            client: None,
            appends: Appends::First,
        }
    }
}

/// The connection to one peer, as openraft uses it.
pub struct Network {
    target: NodeId,
    addr: String,
    peers: Peers,
    message_bytes_max: usize,
    client: Option<RaftClient<Conn>>,
    appends: Appends,
}

/// How a [`Network`] sends AppendEntries (see [`Network::call`]).
enum Appends {
    /// None sent yet: the first goes unary.
    First,
    /// On an `AppendStream` call: the open one, if any (see [`Network::append`]).
    Streamed(Option<BidiStream>),
    /// Unary: the peer refused `AppendStream` (an older build).
    Unary,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Network {
    fn client(&mut self) -> Result<RaftClient<Conn>, Unreachable> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let channel = self.peers.channel(&self.addr).map_err(|e| Unreachable::new(&e))?;
        let client = RaftClient::new(channel)
            .max_decoding_message_size(self.message_bytes_max)
            .max_encoding_message_size(self.message_bytes_max);
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn call<Req, Resp, E>(&mut self, rpc: Rpc, req: &Req, timeout: Duration) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.peers
            .faults
            .before_call(self.target)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let data = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let msg = RaftMessage { data };
        // openraft makes a `Network` per replication stream, which sends many AppendEntries,
        // and one per peer for every leadership check behind linearizable reads, which sends
        // one. Opening a streaming call for that one would cost more than a unary call, so a
        // `Network`'s first AppendEntries goes unary and the rest on the stream.
        let reply = match (rpc, &self.appends) {
            (Rpc::Append, Appends::Streamed(_)) => {
                match tokio::time::timeout(timeout, self.append(&msg)).await {
                    // The peer runs a build without `AppendStream`; the request never reached
                    // its Raft, so it goes again, unary, as will the next ones.
                    Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                        tracing::info!(
                            peer = self.target,
                            "the peer has no AppendStream; sending AppendEntries unary"
                        );
                        self.appends = Appends::Unary;
                        self.unary(rpc, msg, timeout).await
                    }
                    streamed => streamed,
                }
            }
            (Rpc::Append, Appends::First) => {
                self.appends = Appends::Streamed(None);
                self.unary(rpc, msg, timeout).await
            }
            _ => self.unary(rpc, msg, timeout).await,
        };
        let reply = match reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(status)) => {
                // Drop the client so the next call makes it again. (A failed AppendStream
                // call is gone already, see `append`.)
                self.client = None;
                return Err(status_error(status));
            }
            // An AppendStream call went with the dropped future (see `append`).
            Err(elapsed) => return Err(RPCError::Unreachable(Unreachable::new(&elapsed))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// One unary call of `rpc`, within `timeout`.
    async fn unary(
        &mut self,
        rpc: Rpc,
        msg: RaftMessage,
        timeout: Duration,
    ) -> Result<Result<RaftMessage, tonic::Status>, tokio::time::error::Elapsed> {
        let mut client = match self.client() {
            Ok(client) => client,
            Err(e) => return Ok(Err(tonic::Status::unavailable(e.to_string()))),
        };
        let call = async {
            let reply = match rpc {
                Rpc::Append => client.append_entries(msg).await,
                Rpc::Vote => client.vote(msg).await,
                Rpc::Snapshot => client.install_snapshot(msg).await,
            };
            reply.map(tonic::Response::into_inner)
        };
        tokio::time::timeout(timeout, call).await
    }

    /// One AppendEntries over the open `AppendStream` call to the peer, opening it first if
    /// there is none. openraft sends a peer one AppendEntries at a time and awaits its
    /// answer, so answers pair with requests in order.
    ///
    /// The call is taken out of `self` while a request is on it and put back once its answer
    /// is in. A call that fails, or whose future openraft drops in between (its own
    /// timeout), is dropped with it: the next request goes on a new call and never gets an
    /// earlier request's answer.
    async fn append(&mut self, msg: &RaftMessage) -> Result<RaftMessage, tonic::Status> {
        let open = match &mut self.appends {
            Appends::Streamed(open) => open.take(),
            Appends::First | Appends::Unary => None,
        };
        let mut stream = match open {
            Some(stream) => stream,
            None => {
                let conn =
                    self.peers.channel(&self.addr).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                conn.bidi(&format!("/{}/AppendStream", raft_server::SERVICE_NAME)).await?
            }
        };
        stream.send(msg, self.message_bytes_max)?;
        let reply = stream.recv(self.message_bytes_max).await?;
        self.appends = Appends::Streamed(Some(stream));
        Ok(reply)
    }
}

/// What openraft makes of a failed call: `Unreachable` (it backs off) when the peer or the
/// connection is gone, a network error otherwise.
fn status_error<E: std::error::Error>(status: tonic::Status) -> RpcErr<E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.call(Rpc::Append, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(Rpc::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use openraft::CommittedLeaderId;
    use openraft::LogId;
    use openraft::Vote;
    use seam_proto::v1 as pb;
    use seam_proto::v1::raft_server::Raft as RaftRpc;
    use seam_proto::v1::raft_server::RaftServer;
    use tonic::codegen::BoxStream;
    use tonic::Request;
    use tonic::Response;
    use tonic::Status;
    use tonic::Streaming;

    use super::*;

    /// A peer that answers each AppendEntries with `PartialSuccess` of the request's
    /// `leader_commit`, so an answer names its request. Answers to a request whose
    /// `leader_commit` index is [`SLOW_INDEX`] come 500 ms late. Counts unary AppendEntries
    /// and `AppendStream` calls.
    #[derive(Clone, Default)]
    struct EchoPeer {
        unary: Arc<AtomicUsize>,
        streams: Arc<AtomicUsize>,
        /// Answer `AppendStream` with UNIMPLEMENTED, as a build without it does.
        no_streams: bool,
    }

    async fn echo(request: &pb::RaftMessage) -> Option<pb::RaftMessage> {
        let rpc: AppendEntriesRequest<TypeConfig> = bincode::deserialize(&request.data).ok()?;
        if rpc.leader_commit.map(|c| c.index) == Some(SLOW_INDEX) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let answer: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            Ok(AppendEntriesResponse::PartialSuccess(rpc.leader_commit));
        Some(pb::RaftMessage { data: bincode::serialize(&answer).ok()? })
    }

    const SLOW_INDEX: u64 = 1;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn request(commit_index: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: Some(log_id(commit_index)),
        }
    }

    #[tonic::async_trait]
    impl RaftRpc for EchoPeer {
        async fn append_entries(
            &self,
            req: Request<pb::RaftMessage>,
        ) -> Result<Response<pb::RaftMessage>, Status> {
            self.unary.fetch_add(1, Ordering::SeqCst);
            let answer = echo(req.get_ref()).await.ok_or_else(|| Status::invalid_argument("undecodable"))?;
            Ok(Response::new(answer))
        }

        type AppendStreamStream = BoxStream<pb::RaftMessage>;

        async fn append_stream(
            &self,
            req: Request<Streaming<pb::RaftMessage>>,
        ) -> Result<Response<Self::AppendStreamStream>, Status> {
            self.streams.fetch_add(1, Ordering::SeqCst);
            if self.no_streams {
                return Err(Status::unimplemented("no AppendStream in this build"));
            }
            let answers = futures::stream::unfold(req.into_inner(), |mut requests| async move {
                let request = requests.message().await.ok()??;
                Some((Ok(echo(&request).await?), requests))
            });
            Ok(Response::new(Box::pin(answers)))
        }

        async fn vote(&self, _: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn install_snapshot(
            &self,
            _: Request<pb::RaftMessage>,
        ) -> Result<Response<pb::RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn read_index(
            &self,
            _: Request<pb::ReadIndexRequest>,
        ) -> Result<Response<pb::ReadIndexResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    async fn network_to_echo_peer() -> (Network, EchoPeer) {
        network_to(EchoPeer::default()).await
    }

    async fn network_to(peer: EchoPeer) -> (Network, EchoPeer) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder().add_service(RaftServer::new(peer.clone()));
        tokio::spawn(server.serve_with_incoming(incoming));
        let mut factory = NetworkFactory {
            peers: Peers::new(Arc::default()),
            message_bytes_max: 1 << 20,
            region: "r".into(),
            inter_region_delay_ms: 0,
        };
        (factory.new_client(2, &Node { addr, region: "r".into() }).await, peer)
    }

    async fn append(net: &mut Network, commit_index: u64) -> Option<LogId<NodeId>> {
        let option = RPCOption::new(Duration::from_secs(5));
        match net.append_entries(request(commit_index), option).await {
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => matching,
            other => panic!("request {commit_index}: unexpected answer {other:?}"),
        }
    }

    #[tokio::test]
    async fn answers_pair_with_their_requests_on_one_stream() {
        let (mut net, peer) = network_to_echo_peer().await;
        for i in 2..20 {
            assert_eq!(append(&mut net, i).await, Some(log_id(i)));
        }
        // The first unary (a leadership check's `Network` sends just one), the rest on one call.
        assert_eq!(peer.unary.load(Ordering::SeqCst), 1);
        assert_eq!(peer.streams.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_dropped_before_its_answer_does_not_hand_that_answer_to_the_next() {
        let (mut net, _) = network_to_echo_peer().await;
        assert_eq!(append(&mut net, 2).await, Some(log_id(2)));
        assert_eq!(append(&mut net, 3).await, Some(log_id(3)));
        // What openraft's own timeout does: the call's future is dropped mid-flight.
        let dropped = tokio::time::timeout(Duration::from_millis(100), append(&mut net, SLOW_INDEX)).await;
        assert!(dropped.is_err(), "the slow answer came within 100 ms");
        assert_eq!(
            append(&mut net, 4).await,
            Some(log_id(4)),
            "the next request got an earlier one's answer"
        );
    }

    #[tokio::test]
    async fn a_call_that_timed_out_is_replaced() {
        let (mut net, peer) = network_to_echo_peer().await;
        assert_eq!(append(&mut net, 2).await, Some(log_id(2)));
        let option = RPCOption::new(Duration::from_millis(100));
        let timed_out = net.append_entries(request(SLOW_INDEX), option).await;
        assert!(matches!(timed_out, Err(RPCError::Unreachable(_))), "{timed_out:?}");
        assert_eq!(append(&mut net, 4).await, Some(log_id(4)));
        assert_eq!(peer.streams.load(Ordering::SeqCst), 2, "the timed-out call was replaced");
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_gets_every_request_unary() {
        let (mut net, peer) = network_to(EchoPeer { no_streams: true, ..EchoPeer::default() }).await;
        for i in 2..7 {
            assert_eq!(append(&mut net, i).await, Some(log_id(i)));
        }
        assert_eq!(peer.unary.load(Ordering::SeqCst), 5, "the refused one went again, unary");
        assert_eq!(peer.streams.load(Ordering::SeqCst), 1, "the stream was tried once");
    }
}
