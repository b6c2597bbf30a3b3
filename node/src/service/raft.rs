//! The receiving side of openraft's network (see [`crate::network`]), plus ReadIndex.
//! AppendEntries come as unary calls or, from a leader's replication, as the messages of
//! one `AppendStream` call, answered one by one in order.
//!
//! A message that does not decode is `InvalidArgument` (the peer runs another build, or
//! the bytes were damaged); Raft's own refusals travel back inside the reply as
//! `Err(RaftError)` for openraft on the other side to act on.

use seam_proto::v1 as pb;
use seam_proto::v1::raft_server::Raft as RaftRpc;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tonic::codegen::BoxStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::idle_spin::Activity;
use crate::replica::Replica;

/// The `Raft` service of one node.
#[derive(Clone)]
pub struct RaftService {
    replica: Replica,
    /// Turns true when the node starts shutting down: open `AppendStream` calls then end,
    /// or the server's graceful shutdown would wait for the leader to close them.
    stopping: watch::Receiver<bool>,
    /// Each `AppendStream` message is noted here, as the server notes each call.
    activity: Activity,
}

impl RaftService {
    pub fn new(replica: Replica, stopping: watch::Receiver<bool>, activity: Activity) -> Self {
        RaftService { replica, stopping, activity }
    }
}

fn decode<T: DeserializeOwned>(msg: &pb::RaftMessage) -> Result<T, Status> {
    bincode::deserialize(&msg.data)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn encode_message<T: Serialize>(value: &T) -> Result<pb::RaftMessage, Status> {
    let data =
        bincode::serialize(value).map_err(|e| Status::internal(format!("encoding Raft reply: {e}")))?;
    Ok(pb::RaftMessage { data })
}

fn encode<T: Serialize>(value: &T) -> Result<Response<pb::RaftMessage>, Status> {
    encode_message(value).map(Response::new)
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc = decode(req.get_ref())?;
        encode(&self.replica.raft().append_entries(rpc).await)
    }

    type AppendStreamStream = BoxStream<pb::RaftMessage>;

    async fn append_stream(
        &self,
        req: Request<Streaming<pb::RaftMessage>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        // One request at a time, each answered before the next is read: the sender keeps
        // one in flight, and h2's flow control holds back a sender that does not. Between
        // requests the call ends if the node is shutting down.
        let state = (req.into_inner(), self.replica.clone(), self.stopping.clone(), self.activity.clone());
        let answers = futures::stream::unfold(Some(state), |state| async move {
            let (mut requests, replica, mut stopping, activity) = state?;
            let received = tokio::select! {
                received = requests.message() => received,
                _ = stopping.wait_for(|stopping| *stopping) => {
                    return Some((Err(Status::unavailable("the node is shutting down")), None));
                }
            };
            let request = match received {
                Ok(Some(request)) => {
                    activity.note();
                    request
                }
                Ok(None) => return None,
                Err(status) => return Some((Err(status), None)),
            };
            let answer = match decode(&request) {
                Ok(rpc) => encode_message(&replica.raft().append_entries(rpc).await),
                Err(status) => Err(status),
            };
            // An error ends the call (tonic sends it as the status); the next item is None.
            let next = answer.is_ok().then_some((requests, replica, stopping, activity));
            Some((answer, next))
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, req: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc = decode(req.get_ref())?;
        encode(&self.replica.raft().vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc = decode(req.get_ref())?;
        encode(&self.replica.raft().install_snapshot(rpc).await)
    }

    async fn read_index(
        &self,
        _req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let index = self.replica.local_read_index().await?;
        let term = self.replica.raft().metrics().borrow().current_term;
        Ok(Response::new(pb::ReadIndexResponse { index, term }))
    }
}
