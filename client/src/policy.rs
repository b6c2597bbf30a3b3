//! Field policies: set, list, demote, promote, history, revert.
//!
//! Policies live in the Raft state machine. The client also keeps a cached copy (refreshed
//! every `policy_refresh_ms`, and at once when a response's tier surprises it) to route
//! requests; changes made through this handle update the cache immediately.

use std::time::Duration;

use seam_proto::v1 as pb;
use seam_proto::v1::policy_client::PolicyClient;

use crate::client::{Client, Route};
use crate::error::{Effect, Error};
use crate::types::{Meta, Policy, PolicyChange, PolicyOutcome};

/// Policy operations. Get one with [`Client::policies`].
#[derive(Debug, Clone)]
pub struct Policies {
    client: Client,
}

impl Client {
    /// Policy operations.
    pub fn policies(&self) -> Policies {
        Policies { client: self.clone() }
    }
}

enum PolicyReq {
    Set(pb::SetPolicyRequest),
    Demote(pb::DemoteRequest),
    Promote(pb::PromoteRequest),
    Revert(pb::RevertRequest),
}

impl Policies {
    async fn change(
        &self,
        build: impl FnOnce(pb::RequestHeader) -> PolicyReq,
    ) -> Result<PolicyOutcome, Error> {
        let inner = &self.client.inner;
        let id = inner.next_request_id();
        let call = inner.call(Route::Leader, Effect::Write, id);
        let resp = match build(inner.header(id, None)) {
            PolicyReq::Set(r) => {
                inner.invoke(call, r, |ch, r| async move { PolicyClient::new(ch).set(r).await }).await
            }
            PolicyReq::Demote(r) => {
                inner.invoke(call, r, |ch, r| async move { PolicyClient::new(ch).demote(r).await }).await
            }
            PolicyReq::Promote(r) => {
                inner.invoke(call, r, |ch, r| async move { PolicyClient::new(ch).promote(r).await }).await
            }
            PolicyReq::Revert(r) => {
                inner.invoke(call, r, |ch, r| async move { PolicyClient::new(ch).revert(r).await }).await
            }
        }?;
        let change = resp.change.map(PolicyChange::from_proto);
        if let Some(change) = &change {
            match &change.after {
                Some(after) => inner.upsert_policy(after.clone()),
                None => inner.remove_policy(&change.prefix),
            }
        }
        Ok(PolicyOutcome {
            change,
            contested_keys: resp.contested_keys,
            propagation_ms: resp.propagation_ms,
            lagging_nodes: resp.lagging_nodes,
            meta: Meta::from_proto(resp.header.as_ref()),
        })
    }

    /// Sets a field's policy.
    ///
    /// ```no_run
    /// # async fn example(client: seam_client::Client) -> Result<(), seam_client::Error> {
    /// use seam_client::{Policy, STALENESS_WARM_MS};
    /// let out = client.policies().set(Policy::relaxed("cart/", STALENESS_WARM_MS)).await?;
    /// println!("every node serves it after {} ms", out.propagation_ms);
    /// # Ok(()) }
    /// ```
    pub async fn set(&self, policy: Policy) -> Result<PolicyOutcome, Error> {
        let policy = policy.to_proto();
        self.change(|header| {
            PolicyReq::Set(pb::SetPolicyRequest { header: Some(header), policy: Some(policy) })
        })
        .await
    }

    /// Every policy, as the answering node's state machine has them.
    pub async fn list(&self) -> Result<Vec<Policy>, Error> {
        let inner = &self.client.inner;
        let id = inner.next_request_id();
        let call = inner.call(Route::Leader, Effect::Read, id);
        let req = pb::ListPoliciesRequest { header: Some(inner.header(id, None)) };
        let resp =
            inner.invoke(call, req, |ch, r| async move { PolicyClient::new(ch).list(r).await }).await?;
        let policies: Vec<Policy> = resp.policies.into_iter().map(Policy::from_proto).collect();
        inner.set_policies(policies.clone());
        Ok(policies)
    }

    /// Sacred -> relaxed with a staleness budget (and a default TTL, `None`: none), seeded
    /// with the field's current sacred values.
    pub async fn demote(
        &self,
        prefix: impl AsRef<[u8]>,
        staleness: Duration,
        ttl: Option<Duration>,
    ) -> Result<PolicyOutcome, Error> {
        let prefix = prefix.as_ref().to_vec();
        self.change(|header| {
            PolicyReq::Demote(pb::DemoteRequest {
                header: Some(header),
                prefix,
                staleness_ms: staleness.as_millis() as u64,
                ttl_ms: ttl.map(|d| d.as_millis() as u64).unwrap_or(0),
            })
        })
        .await
    }

    /// Relaxed -> sacred: the converged value of every key is written through Raft first;
    /// the contested keys are reported in [`PolicyOutcome::contested_keys`].
    pub async fn promote(&self, prefix: impl AsRef<[u8]>) -> Result<PolicyOutcome, Error> {
        let prefix = prefix.as_ref().to_vec();
        self.change(|header| PolicyReq::Promote(pb::PromoteRequest { header: Some(header), prefix })).await
    }

    /// Puts a field back as it was before its last change.
    pub async fn revert(&self, prefix: impl AsRef<[u8]>) -> Result<PolicyOutcome, Error> {
        let prefix = prefix.as_ref().to_vec();
        self.change(|header| PolicyReq::Revert(pb::RevertRequest { header: Some(header), prefix })).await
    }

    /// Policy changes, oldest first, of `prefix` (`None`: all fields).
    pub async fn history(&self, prefix: Option<&[u8]>) -> Result<Vec<PolicyChange>, Error> {
        let inner = &self.client.inner;
        let id = inner.next_request_id();
        let call = inner.call(Route::Leader, Effect::Read, id);
        let req = pb::PolicyHistoryRequest {
            header: Some(inner.header(id, None)),
            prefix: prefix.unwrap_or_default().to_vec(),
        };
        let resp =
            inner.invoke(call, req, |ch, r| async move { PolicyClient::new(ch).history(r).await }).await?;
        Ok(resp.changes.into_iter().map(PolicyChange::from_proto).collect())
    }
}
