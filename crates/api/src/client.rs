//! The client library the CLI uses: any node of a cluster will do.
//!
//! A [`Client`] knows one or more server addresses. Each call gets a
//! deadline; within it, a call that fails because a node is down, is not
//! the leader, or has no leader yet (UNAVAILABLE, or a connection error) is
//! retried with backoff: first at the leader a node named in its answer
//! (`kaon-leader-api` metadata), else at the next address. Retrying is safe
//! because every write is idempotent: submits and retries carry an
//! idempotency key ([`new_idempotency_key`] when the user gave none), and
//! the other writes (register, cancel, pause, membership) are idempotent by
//! nature.

use std::future::Future;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::v1::kaon_client::KaonClient;

/// Metadata naming the leader's API address on UNAVAILABLE answers (the
/// server's `LEADER_API_HEADER`).
pub const LEADER_API_HEADER: &str = "kaon-leader-api";
/// Metadata asking for a stale read (the server's `READ_HEADER`).
pub const READ_HEADER: &str = "kaon-read";
/// Default deadline of a whole call, retries included.
pub const CALL_DEADLINE_DEFAULT: Duration = Duration::from_secs(30);
/// Longest pause between two tries.
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// First pause between two tries.
const BACKOFF_MIN: Duration = Duration::from_millis(20);

/// A fresh idempotency key: submits that the client may retry carry one, so
/// a retry after a lost answer returns the same run.
pub fn new_idempotency_key() -> String {
    format!("kaon-cli-{}", uuid::Uuid::new_v4())
}

/// A kaon API client over one or more nodes (see the module docs).
#[derive(Debug)]
pub struct Client {
    /// Base URLs (`http://host:port`), tried in order.
    endpoints: Vec<String>,
    /// Lazily connected channels, by URL.
    channels: std::collections::BTreeMap<String, Channel>,
    /// Index of the endpoint to try first (the last that answered, or the
    /// leader a node named).
    current: usize,
    /// Deadline of one call, retries included.
    pub deadline: Duration,
    /// Accept a possibly stale read from the node asked (no round trip to
    /// the leader).
    pub stale_reads: bool,
    /// Bearer token sent with every call (servers with `--auth-file`).
    pub token: Option<String>,
    /// The cluster CA's certificate (PEM) that `https://` servers are
    /// verified against.
    pub tls_ca: Option<Vec<u8>>,
    /// A client certificate and key (PEM) presented to `https://`
    /// servers: an identity instead of a token.
    pub tls_identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// `host:port` or a URL to a URL.
fn url(addr: &str) -> String {
    let a = addr.trim();
    if a.contains("://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

impl Client {
    /// A client for `servers`: comma-separated `host:port`s or URLs.
    pub fn new(servers: &str) -> Result<Client, String> {
        let endpoints: Vec<String> = servers
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(url)
            .collect();
        if endpoints.is_empty() {
            return Err("no server address given".into());
        }
        for e in &endpoints {
            Channel::from_shared(e.clone())
                .map_err(|err| format!("bad server address {e:?}: {err}"))?;
        }
        Ok(Client {
            endpoints,
            channels: Default::default(),
            current: 0,
            deadline: CALL_DEADLINE_DEFAULT,
            stale_reads: false,
            token: None,
            tls_ca: None,
            tls_identity: None,
        })
    }

    /// The endpoint that answered last.
    pub fn current_endpoint(&self) -> &str {
        &self.endpoints[self.current]
    }

    fn channel(&mut self, i: usize) -> Result<Channel, Status> {
        let e = self.endpoints[i].clone();
        if let Some(c) = self.channels.get(&e) {
            return Ok(c.clone());
        }
        let mut endpoint = Channel::from_shared(e.clone())
            .expect("validated in new")
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        if e.starts_with("https://") {
            let Some(ca) = &self.tls_ca else {
                return Err(Status::invalid_argument(format!(
                    "{e}: an https:// server needs the cluster CA's certificate (--tls-ca or KAON_TLS_CA)"
                )));
            };
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca));
            if let Some((cert, key)) = &self.tls_identity {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|err| Status::invalid_argument(format!("{e}: TLS: {err}")))?;
        }
        let c = endpoint.connect_lazy();
        self.channels.insert(e, c.clone());
        Ok(c)
    }

    /// Calls `f` with a client and the request until it succeeds, fails
    /// with an error that retrying cannot fix, or the deadline passes.
    pub async fn call<T, R, F, Fut>(&mut self, msg: T, f: F) -> Result<R, Status>
    where
        T: Clone,
        F: Fn(KaonClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.deadline;
        let mut backoff = BACKOFF_MIN;
        let mut last: Option<Status> = None;
        let mut tries = 0u32;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                let why = last.map(|s| s.message().to_string()).unwrap_or_default();
                // A plain-text client at a TLS port sees only a broken
                // connection: say what may be wrong.
                let hint = if self.endpoints.iter().all(|e| e.starts_with("http://"))
                    && (why.contains("transport") || why.contains("connection"))
                {
                    " (if the cluster uses TLS: https:// addresses and --tls-ca)"
                } else {
                    ""
                };
                return Err(Status::deadline_exceeded(format!(
                    "no answer within {:?} after {tries} tries ({} servers); last error: {why}{hint}",
                    self.deadline,
                    self.endpoints.len()
                )));
            }
            let mut req = Request::new(msg.clone());
            req.set_timeout(left);
            if self.stale_reads {
                req.metadata_mut()
                    .insert(READ_HEADER, "stale".parse().expect("ascii"));
            }
            if let Some(t) = &self.token {
                let v = format!("Bearer {}", t.trim()).parse().map_err(|_| {
                    Status::invalid_argument("the token has characters a header cannot carry")
                })?;
                req.metadata_mut().insert("authorization", v);
            }
            tries += 1;
            let client = KaonClient::new(self.channel(self.current)?);
            match f(client, req).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if retryable(&s) => {
                    // The leader's host:port, in the scheme of the node
                    // that named it (a TLS cluster's are all https).
                    let tls = self.endpoints[self.current].starts_with("https://");
                    let hint = s
                        .metadata()
                        .get(LEADER_API_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(|a| match (a.contains("://"), tls) {
                            (false, true) => format!("https://{}", a.trim()),
                            _ => url(a),
                        });
                    match hint {
                        Some(leader) => {
                            self.current = match self.endpoints.iter().position(|e| *e == leader) {
                                Some(i) => i,
                                None => {
                                    self.endpoints.push(leader);
                                    self.endpoints.len() - 1
                                }
                            };
                        }
                        None => self.current = (self.current + 1) % self.endpoints.len(),
                    }
                    last = Some(s);
                    let pause = backoff
                        .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(s)
                    if s.message().contains("h2 protocol error")
                        && self.endpoints[self.current].starts_with("http://") =>
                {
                    // What a plain-text client sees from a TLS port.
                    return Err(Status::unavailable(format!(
                        "{}: {} (the server may use TLS: use an https:// address and --tls-ca)",
                        self.endpoints[self.current],
                        s.message()
                    )));
                }
                Err(s) => return Err(s),
            }
        }
    }
}

/// Errors another try (maybe at another node) can fix: no leader, node
/// down or unreachable, a forwarded call cut by a leader change.
fn retryable(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable => true,
        // A connection reset mid-call surfaces as Unknown with a transport
        // message; a per-try deadline as DeadlineExceeded or Cancelled.
        Code::Unknown => s.message().contains("transport") || s.message().contains("connection"),
        Code::Cancelled => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_urls_and_bad_ones_are_refused() {
        let c = Client::new("127.0.0.1:1, http://[::1]:2").unwrap();
        assert_eq!(c.endpoints, vec!["http://127.0.0.1:1", "http://[::1]:2"]);
        assert!(Client::new(" , ").unwrap_err().contains("no server"));
        assert!(Client::new("http://bad host:1").is_err());
    }

    #[tokio::test]
    async fn unreachable_servers_fail_at_the_deadline_naming_the_last_error() {
        // Ports from a listener we close: nothing listens there.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let mut c = Client::new(&addr.to_string()).unwrap();
        c.deadline = Duration::from_millis(300);
        let err = c
            .call(crate::v1::ClusterStatusRequest {}, |mut k, r| async move {
                k.cluster_status(r).await
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
        assert!(err.message().contains("tries"), "{err}");
    }
}
