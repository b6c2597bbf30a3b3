//! openraft's network over tonic: AppendEntries, Vote and InstallSnapshot (in chunks).
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
use seam_client::transport::Conn;
use seam_proto::v1::raft_client::RaftClient;
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
        let mut client = self.client()?;
        let msg = RaftMessage { data };
        let call = async {
            match rpc {
                Rpc::Append => client.append_entries(msg).await,
                Rpc::Vote => client.vote(msg).await,
                Rpc::Snapshot => client.install_snapshot(msg).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(elapsed) => return Err(RPCError::Unreachable(Unreachable::new(&elapsed))),
            Ok(Err(status)) => {
                // Drop the channel so the next call reconnects.
                self.client = None;
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                        RPCError::Unreachable(Unreachable::new(&status))
                    }
                    _ => RPCError::Network(NetworkError::new(&status)),
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
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
