//! How the scheduler driver reaches a Mesos master: the HTTP connection is
//! handed in through [`crate::driver::DriverConfig::transport`], not reached
//! for, so a simulation can run the driver against the emulator's master
//! router in the same process, with no socket and on paused tokio time.
//!
//! A transport does one HTTP exchange at a time: [`HttpTransport::send`]
//! takes a request and answers with the status, the headers and the body
//! as a stream of chunks. Plain calls read the whole body
//! ([`HttpResponse::text`]); SUBSCRIBE reads it chunk by chunk
//! ([`HttpResponse::chunk`]) for as long as the stream lives. Redirects are
//! never followed by a transport: the driver sees the 307 and moves on to
//! the leading master itself.
//!
//! Implementations: [`MesosTransport::reqwest`] (the default; a `reqwest`
//! client per driver, as before) and [`MesosTransport::in_process`] (hands
//! requests straight to an axum [`Router`], e.g. the emulator's
//! `kaon_mesos_emulator::EmulatorHandle::master_router`); anything else
//! (fault injection, several masters) through [`MesosTransport::custom`].

use axum::Router;
use axum::http::{HeaderMap, Method};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, StreamExt as _};
use std::sync::Arc;
use std::time::Duration;

/// Why an exchange failed before the master answered (or while its body
/// was read).
pub type TransportError = Box<dyn std::error::Error + Send + Sync>;

/// One request to the master.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Method (the driver only POSTs).
    pub method: Method,
    /// Absolute URL, e.g. `http://10.0.0.1:5050/api/v1/scheduler`.
    pub url: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// Limit of the whole exchange, body included; `None` for streams.
    pub timeout: Option<Duration>,
}

/// The master's answer; the body arrives as chunks.
pub struct HttpResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body chunks, in order; the stream ends with the body.
    pub body: BoxStream<'static, Result<Bytes, TransportError>>,
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl HttpResponse {
    /// The next body chunk, `None` at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, TransportError> {
        self.body.next().await.transpose()
    }

    /// The whole body, read to its end.
    pub async fn bytes(mut self) -> Result<Bytes, TransportError> {
        let mut all = Vec::new();
        while let Some(c) = self.chunk().await? {
            all.extend_from_slice(&c);
        }
        Ok(all.into())
    }

    /// The whole body as (lossy) text; empty if it cannot be read.
    pub async fn text(self) -> String {
        self.bytes()
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// Something that carries the driver's HTTP exchanges to a master.
pub trait HttpTransport: Send + Sync + 'static {
    /// Sends `request` and answers once the status and headers are in.
    fn send(
        &self,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, TransportError>>;
}

#[derive(Clone)]
enum Kind {
    Reqwest,
    Custom(Arc<dyn HttpTransport>),
}

/// The driver's choice of transport (a [`DriverConfig`] field; default:
/// reqwest over TCP).
///
/// [`DriverConfig`]: crate::driver::DriverConfig
#[derive(Clone)]
pub struct MesosTransport(Kind);

impl Default for MesosTransport {
    fn default() -> Self {
        MesosTransport::reqwest()
    }
}

impl std::fmt::Debug for MesosTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Reqwest => f.write_str("MesosTransport::Reqwest"),
            Kind::Custom(_) => f.write_str("MesosTransport::Custom"),
        }
    }
}

impl MesosTransport {
    /// HTTP over TCP with `reqwest`: each driver builds its own client
    /// (no automatic redirects, 10 s connect timeout).
    pub fn reqwest() -> Self {
        MesosTransport(Kind::Reqwest)
    }

    /// In-process: every request goes straight to `router` (an axum router
    /// is a tower service), whatever host the URL names; no socket is used.
    pub fn in_process(router: Router) -> Self {
        Self::custom(InProcessTransport { router })
    }

    /// Any other transport.
    pub fn custom(transport: impl HttpTransport) -> Self {
        MesosTransport(Kind::Custom(Arc::new(transport)))
    }

    /// Whether this is the default reqwest transport.
    pub fn is_reqwest(&self) -> bool {
        matches!(self.0, Kind::Reqwest)
    }

    /// The transport one driver uses (a fresh reqwest client, or the shared
    /// custom transport).
    pub(crate) fn instantiate(&self) -> Arc<dyn HttpTransport> {
        match &self.0 {
            Kind::Reqwest => Arc::new(ReqwestTransport::new()),
            Kind::Custom(t) => t.clone(),
        }
    }
}

/// The default transport: `reqwest` over TCP.
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// A client that leaves redirects to the driver.
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        ReqwestTransport { client }
    }
}

impl Default for ReqwestTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpTransport for ReqwestTransport {
    fn send(
        &self,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, TransportError>> {
        let mut req = self
            .client
            .request(request.method, &request.url)
            .headers(request.headers)
            .body(request.body);
        if let Some(t) = request.timeout {
            req = req.timeout(t);
        }
        async move {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = futures_util::stream::unfold(Some(resp), |resp| async move {
                let mut resp = resp?;
                match resp.chunk().await {
                    Ok(Some(c)) => Some((Ok(c), Some(resp))),
                    Ok(None) => None,
                    Err(e) => Some((Err(Box::new(e) as TransportError), None)),
                }
            })
            .boxed();
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        }
        .boxed()
    }
}

/// Hands requests to an axum router in the same process.
pub struct InProcessTransport {
    router: Router,
}

impl InProcessTransport {
    /// Serves every request with `router`.
    pub fn new(router: Router) -> Self {
        InProcessTransport { router }
    }
}

/// Splits `http://host:port/path?q` into (`host:port`, `/path?q`).
fn split_url(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

impl HttpTransport for InProcessTransport {
    fn send(
        &self,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, TransportError>> {
        let router = self.router.clone();
        async move {
            let (host, path) = split_url(&request.url);
            let mut builder = axum::http::Request::builder()
                .method(request.method)
                .uri(path)
                .header(axum::http::header::HOST, host);
            if let Some(h) = builder.headers_mut() {
                h.extend(request.headers);
            }
            let req = builder.body(axum::body::Body::from(request.body))?;
            let call = tower::ServiceExt::oneshot(router, req);
            let resp = match request.timeout {
                Some(t) => tokio::time::timeout(t, call)
                    .await
                    .map_err(|_| format!("no answer within {t:?}"))?,
                None => call.await,
            };
            let resp = match resp {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let (parts, body) = resp.into_parts();
            let body = body
                .into_data_stream()
                .map(|r| r.map_err(|e| Box::new(e) as TransportError))
                .boxed();
            Ok(HttpResponse {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://a:1/api/v1/scheduler"),
            ("a:1", "/api/v1/scheduler")
        );
        assert_eq!(split_url("http://a:1"), ("a:1", "/"));
    }
}
