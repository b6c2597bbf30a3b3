//! The client's one typed configuration.
//!
//! Every bound the SDK keeps is a field here (units last, `_ms`, `_bytes`, `_max`), with its
//! default and what happens when it is reached. Build one with [`ClientConfig::new`] or
//! `ClientConfig { endpoints, ..Default::default() }`; [`ClientConfig::validate`] runs
//! before the client uses it.

use crate::error::Error;

/// Default client endpoint: a single local node.
pub const ENDPOINT_DEFAULT: &str = "127.0.0.1:7001";

/// How a [`Client`](crate::Client) reaches, retries and caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Seed addresses (`host:port`, no scheme). Any one reachable node is enough: the client
    /// learns the members and the leader from it. At least one; at most [`ENDPOINTS_MAX`].
    /// Default: `["127.0.0.1:7001"]`.
    pub endpoints: Vec<String>,
    /// The client's region. Relaxed operations and bounded-staleness reads go to a node of
    /// this region when one is known. Empty: no preference. Default: empty.
    pub region: String,
    /// Stable identity of this client instance, used with request ids for idempotency.
    /// `None`: a random id is generated. If you set it, no two live clients may share it.
    /// Default: `None`.
    pub client_id: Option<String>,
    /// Time to establish a TCP + HTTP/2 connection, ms. At the limit the attempt fails as a
    /// definite transport error and the next attempt tries another node. Default: 1000.
    pub connect_timeout_ms: u64,
    /// Time for one attempt of one request, ms. At the limit a read is retried; a write's
    /// outcome becomes indeterminate and it is retried with the same request id. Default: 5000.
    pub request_timeout_ms: u64,
    /// Retries after the first attempt of one request (redirects to a named leader do not
    /// count, up to [`REDIRECTS_MAX`]). Past it the last error is returned. Default: 12: with
    /// the default backoff the waits add up to 2.4-4.75 s, enough to ride out one leader
    /// election (a node's election timeout is 1-2 s by default).
    pub retries_max: u32,
    /// First backoff delay, ms; doubles per attempt. Default: 50.
    pub backoff_base_ms: u64,
    /// Largest backoff delay, ms. Default: 500 (so a client notices a new leader at most
    /// about half a second after it is elected).
    pub backoff_max_ms: u64,
    /// Relaxed writes that may wait in the offline queue. Past it the call returns
    /// [`Error::Backpressure`]. Default: 1024.
    pub offline_queue_count_max: usize,
    /// Bytes (keys + values + a fixed per-entry overhead) the offline queue may hold. Past it
    /// the call returns [`Error::Backpressure`]. Default: 4 MiB.
    pub offline_queue_bytes_max: usize,
    /// How long a relaxed write may wait in the offline queue, ms: the bound on the drain's
    /// retries. A write still queued after this is dropped and reported in
    /// [`Client::offline_rejections`](crate::Client::offline_rejections), as
    /// [`Error::Unavailable`] when it never reached a node (definitely not applied) or
    /// [`Error::Indeterminate`] when a drain attempt may have applied it. Default: 600000
    /// (10 minutes).
    pub offline_write_age_max_ms: u64,
    /// Keys whose last relaxed write this client remembers for read-your-writes. At the limit
    /// the oldest entry is forgotten, and reads of that key lose the session guarantee (they
    /// still honour the field's staleness budget). Default: 10000.
    pub session_keys_max: usize,
    /// Subtracted from every lease's TTL on the client's monotonic clock, ms: a
    /// [`LeaseGuard`](crate::LeaseGuard) reports itself invalid this long before the store
    /// could grant the key to anyone else. Covers clock-rate drift between client and leader
    /// and the leader's own expiry stamping. Must be below the TTLs you ask for. Default: 500.
    pub lease_skew_margin_ms: u64,
    /// How often the cached policy table and member list are refreshed, ms (also refreshed at
    /// once when a response's tier differs from the prediction). Default: 5000.
    pub policy_refresh_ms: u64,
}

/// Upper bound on seed endpoints (a typo'd list of thousands is rejected by `validate`).
pub const ENDPOINTS_MAX: usize = 64;

/// Redirects to a leader named by `NotLeader` that one request follows without consuming a
/// retry; past it redirects count as retries.
pub const REDIRECTS_MAX: u32 = 3;

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoints: vec![ENDPOINT_DEFAULT.to_string()],
            region: String::new(),
            client_id: None,
            connect_timeout_ms: 1_000,
            request_timeout_ms: 5_000,
            retries_max: 12,
            backoff_base_ms: 50,
            backoff_max_ms: 500,
            offline_queue_count_max: 1_024,
            offline_queue_bytes_max: 4 << 20,
            offline_write_age_max_ms: 600_000,
            session_keys_max: 10_000,
            lease_skew_margin_ms: 500,
            policy_refresh_ms: 5_000,
        }
    }
}

impl ClientConfig {
    /// The defaults with these endpoints.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig { endpoints: endpoints.into_iter().map(Into::into).collect(), ..Default::default() }
    }

    /// Sets the client's region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |limit: &str, max: u64, message: String| {
            Err(Error::InvalidArgument { limit: limit.to_string(), max, message })
        };
        if self.endpoints.is_empty() {
            return bad("endpoints", ENDPOINTS_MAX as u64, "at least one endpoint is needed".into());
        }
        if self.endpoints.len() > ENDPOINTS_MAX {
            return bad(
                "endpoints",
                ENDPOINTS_MAX as u64,
                format!("{} endpoints given, at most {ENDPOINTS_MAX}", self.endpoints.len()),
            );
        }
        for endpoint in &self.endpoints {
            if endpoint.is_empty() || endpoint.contains(char::is_whitespace) || !endpoint.contains(':') {
                return bad("endpoints", 0, format!("endpoint {endpoint:?} is not host:port"));
            }
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() {
                return bad("client_id", 0, "client_id must not be empty (use None for a random one)".into());
            }
        }
        let positive = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("backoff_base_ms", self.backoff_base_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            ("policy_refresh_ms", self.policy_refresh_ms),
            ("offline_queue_count_max", self.offline_queue_count_max as u64),
            ("offline_queue_bytes_max", self.offline_queue_bytes_max as u64),
            ("offline_write_age_max_ms", self.offline_write_age_max_ms),
            ("session_keys_max", self.session_keys_max as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return bad(name, 0, format!("{name} must be greater than 0"));
            }
        }
        if self.backoff_base_ms > self.backoff_max_ms {
            return bad(
                "backoff_max_ms",
                self.backoff_max_ms,
                format!("backoff_base_ms ({}) exceeds backoff_max_ms", self.backoff_base_ms),
            );
        }
        if self.retries_max > RETRIES_MAX {
            return bad("retries_max", RETRIES_MAX as u64, format!("retries_max is at most {RETRIES_MAX}"));
        }
        Ok(())
    }
}

/// The largest `retries_max` that `validate` accepts: with backoff capped, 100 retries is
/// already minutes of waiting for one call.
pub const RETRIES_MAX: u32 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        ClientConfig::default().validate().expect("defaults are valid");
    }

    #[test]
    fn bad_fields_are_named() {
        let mut config = ClientConfig::new(Vec::<String>::new());
        assert!(config.validate().unwrap_err().to_string().contains("endpoints"));
        config.endpoints = vec!["no-port".into()];
        assert!(config.validate().unwrap_err().to_string().contains("host:port"));
        config.endpoints = vec!["a:1".into()];
        config.backoff_base_ms = 10_000;
        assert!(config.validate().unwrap_err().to_string().contains("backoff_max_ms"));
        config.backoff_base_ms = 1;
        config.session_keys_max = 0;
        assert!(config.validate().unwrap_err().to_string().contains("session_keys_max"));
        config.session_keys_max = 1;
        config.offline_write_age_max_ms = 0;
        assert!(config.validate().unwrap_err().to_string().contains("offline_write_age_max_ms"));
    }
}
