//! Carrying an [`ErrorDetail`] in a `tonic::Status`.
//!
//! The status code tells generic gRPC clients what class of failure happened; the detail,
//! encoded as protobuf in the status details, tells the SDK exactly which one, with its
//! fields (the leader's address, the current fencing token, the exceeded limit ...).

use prost::Message;
use tonic::Code;
use tonic::Status;

use crate::v1::error_detail::Kind;
use crate::v1::ErrorDetail;

/// Builds a status with `code`, `message` and `kind` encoded in its details.
pub fn with_detail(code: Code, message: impl Into<String>, kind: Kind) -> Status {
    let detail = ErrorDetail { kind: Some(kind) };
    Status::with_details(code, message, detail.encode_to_vec().into())
}

/// The detail a status carries, if it carries one that decodes.
pub fn detail(status: &Status) -> Option<Kind> {
    if status.details().is_empty() {
        return None;
    }
    ErrorDetail::decode(status.details()).ok()?.kind
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::FencingRejected;

    #[test]
    fn detail_round_trips_through_a_status() {
        let kind = Kind::FencingRejected(FencingRejected { presented: 3, current: 7 });
        let status = with_detail(Code::FailedPrecondition, "stale token", kind.clone());
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(detail(&status), Some(kind));
        assert_eq!(detail(&Status::internal("no detail")), None);
    }
}
