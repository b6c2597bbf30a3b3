//! Seam's wire contract: the gRPC services and messages of `seam.proto`, shared by the
//! node and the client SDK.
//!
//! The generated code lives in [`v1`]; helpers for the error details that travel in a
//! `tonic::Status` live in [`status`].

#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v1 {
    tonic::include_proto!("seam.v1");
}

/// The subset of etcd's v3 KV API that the benchmark drives (client only).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

pub mod status;

pub use v1::*;
