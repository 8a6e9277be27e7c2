//! HTTPS to a Mesos master (issue 12): a transport for the scheduler
//! driver (`kaon_mesos::transport::HttpTransport`) that speaks HTTP/1.1
//! over rustls (ring), verifying the master's certificate against the CA
//! given with `--mesos-ca`. The master URL says which: `https://` masters
//! go through it, `http://` ones through plain TCP as before.
//!
//! One connection per exchange (the driver makes few calls; SUBSCRIBE is
//! one long stream), so nothing here pools or reconnects.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use kaon_mesos::transport::{HttpRequest, HttpResponse, HttpTransport, TransportError};
use tokio_rustls::rustls;

/// See the module docs.
#[derive(Clone)]
pub struct MesosHttps {
    config: Arc<rustls::ClientConfig>,
}

impl MesosHttps {
    /// A transport trusting the CA certificate(s) in `ca_pem`.
    pub fn new(ca_pem: &[u8]) -> anyhow::Result<MesosHttps> {
        let roots = kaon_log::tls::roots(ca_pem, "--mesos-ca")?;
        let mut config = rustls::ClientConfig::builder_with_provider(kaon_log::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(MesosHttps {
            config: Arc::new(config),
        })
    }

    /// One request over a new TLS connection.
    pub async fn exchange(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let uri: hyper::Uri = request.url.parse()?;
        let host = uri
            .host()
            .ok_or_else(|| format!("{}: no host", request.url))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let work = async {
            let tls = kaon_log::tls::connect(self.config.clone(), &host, port)
                .await
                .map_err(|e| format!("the Mesos master: {e}"))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = hyper::Request::builder()
                .method(request.method.clone())
                .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
                .header(hyper::header::HOST, format!("{host}:{port}"));
            for (k, v) in &request.headers {
                req = req.header(k, v);
            }
            let resp = sender
                .send_request(req.body(http_body_util::Full::new(request.body.clone()))?)
                .await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = futures_util::stream::unfold(Some(resp.into_body()), |body| async move {
                let mut body = body?;
                loop {
                    match body.frame().await {
                        None => return None,
                        Some(Err(e)) => return Some((Err(Box::new(e) as TransportError), None)),
                        Some(Ok(f)) => {
                            if let Ok(data) = f.into_data() {
                                return Some((Ok(data), Some(body)));
                            }
                        }
                    }
                }
            })
            .boxed();
            Ok::<_, TransportError>(HttpResponse {
                status,
                headers,
                body,
            })
        };
        match request.timeout {
            Some(t) => tokio::time::timeout(t, work)
                .await
                .map_err(|_| format!("{}: no answer within {t:?}", request.url))?,
            None => work.await,
        }
    }
}

impl HttpTransport for MesosHttps {
    fn send(
        &self,
        request: HttpRequest,
    ) -> BoxFuture<'static, Result<HttpResponse, TransportError>> {
        let me = self.clone();
        async move { me.exchange(request).await }.boxed()
    }
}
