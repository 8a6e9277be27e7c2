//! TLS for kaon's ports (issue 12, section 1): rustls (ring), one cluster
//! CA, and certificates reloaded from their files without a restart.
//!
//! A node is given three PEM files: the cluster CA's certificate, its own
//! certificate (signed by that CA) and its key. From them come:
//! - the Raft port's server side: **mutual** TLS, a peer is accepted only
//!   with a certificate the cluster CA signed (so a machine without one can
//!   neither join nor vote nor append);
//! - the API port's server side: TLS, client certificates optional (tokens
//!   authenticate callers; see `kaon_server::auth`);
//! - the client side every node uses to dial its peers (Raft and forwarded
//!   API calls): verifies the peer against the CA and presents the node's
//!   own certificate.
//!
//! Every new connection takes the configuration current at that moment;
//! [`Tls::spawn_reloader`] re-reads the files when one changes (a rotation
//! is: write the new files, then nothing), and keeps the last good
//! configuration, saying why, when the new files do not load. Established
//! connections are not cut by a rotation.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::Uri;

/// How often the certificate files are checked for changes, ms.
pub const TLS_FILES_RECHECK_MS: u64 = 1_000;
/// A TLS handshake that takes longer is abandoned (a silent or plain-text
/// client cannot hold an accept slot).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_QUEUE_MAX: usize = 256;

/// The PEM files a node's TLS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// This node's certificate chain (signed by the CA).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// Which server side a listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Raft RPC between nodes: client certificates required.
    Peers,
    /// The public API: client certificates optional.
    Api,
}

#[derive(Debug)]
struct Configs {
    peers: Arc<rustls::ServerConfig>,
    api: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    modified: [Option<SystemTime>; 3],
}

/// A node's TLS configuration, reloadable (see the module docs).
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    configs: RwLock<Configs>,
}

fn modified(files: &TlsFiles) -> [Option<SystemTime>; 3] {
    [&files.ca, &files.cert, &files.key]
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

fn certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{what} {}: cannot read it", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{what} {}: not PEM certificates", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{what} {}: no certificate in the file",
        path.display()
    );
    Ok(certs)
}

/// The crypto provider of every TLS configuration kaon builds: ring, not
/// aws-lc-rs: it builds with a C compiler alone (no cmake), which is all CI
/// and the agents have; rustls marks it deprecated only for its lack of
/// post-quantum key exchange.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA certificates in `pem` as a root store; `what` names their
/// source in errors (a flag and its file).
pub fn roots(pem: &[u8], what: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.with_context(|| format!("{what}: not PEM certificates"))?;
        roots
            .add(c)
            .with_context(|| format!("{what}: not a usable CA certificate"))?;
    }
    anyhow::ensure!(!roots.is_empty(), "{what}: no certificate in the file");
    Ok(roots)
}

/// TCP to `host:port`, then a TLS handshake with `config` verifying
/// `host` (a name or an address).
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    port: u16,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BoxError> {
    let tcp = TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
    Ok(tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?)
}

fn load(files: &TlsFiles) -> anyhow::Result<Configs> {
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&files.ca, "--tls-ca")? {
        roots.add(c).with_context(|| {
            format!(
                "--tls-ca {}: not a usable CA certificate",
                files.ca.display()
            )
        })?;
    }
    let roots = Arc::new(roots);
    let chain = certs(&files.cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("--tls-key {}: no PEM private key", files.key.display()))?;
    let server = |required: bool| -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        );
        let verifier = if required {
            verifier.build()
        } else {
            verifier.allow_unauthenticated().build()
        }
        .context("building the client certificate verifier")?;
        let mut c = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .with_context(|| {
                format!(
                    "--tls-cert {} and --tls-key {} do not make a usable key pair",
                    files.cert.display(),
                    files.key.display()
                )
            })?;
        c.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(c))
    };
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .context("the node's certificate as a client certificate")?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        peers: server(true)?,
        api: server(false)?,
        client: Arc::new(client),
        modified: modified(files),
    })
}

impl Tls {
    /// Loads `files`; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Tls>> {
        let configs = load(&files)?;
        Ok(Arc::new(Tls {
            files,
            configs: RwLock::new(configs),
        }))
    }

    /// The files this configuration comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files if one changed; keeps the last good
    /// configuration (logging why) when they do not load. Returns whether
    /// a new configuration took effect.
    pub fn reload_if_changed(&self) -> bool {
        let now = modified(&self.files);
        if now == self.configs.read().expect("tls lock").modified {
            return false;
        }
        match load(&self.files) {
            Ok(c) => {
                *self.configs.write().expect("tls lock") = c;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
                true
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "TLS certificates not reloaded: the previous ones stay in use"
                );
                self.configs.write().expect("tls lock").modified = now;
                false
            }
        }
    }

    /// Re-reads the files whenever they change, while `self` lives.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(TLS_FILES_RECHECK_MS)).await;
                let Some(t) = me.upgrade() else { return };
                t.reload_if_changed();
            }
        });
    }

    fn server_config(&self, side: Side) -> Arc<rustls::ServerConfig> {
        let c = self.configs.read().expect("tls lock");
        match side {
            Side::Peers => c.peers.clone(),
            Side::Api => c.api.clone(),
        }
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.configs.read().expect("tls lock").client.clone()
    }

    /// Connections accepted on `listener` after a TLS handshake (with the
    /// configuration current when each arrived), for tonic's
    /// `serve_with_incoming`. A failed handshake (plain text, a certificate
    /// from another CA or expired, a timeout) is logged with the peer's
    /// address and dropped. Accepting stops when the stream is dropped.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        side: Side,
    ) -> ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE_MAX);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    a = listener.accept() => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: pause, go on.
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(me.server_config(side));
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send(Ok(s)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(
                            %peer,
                            port = ?side,
                            error = %e,
                            "TLS handshake refused (a client without TLS, or a certificate this cluster's CA did not sign or that expired)"
                        ),
                        Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }

    /// A connector for tonic channels to peers (`Endpoint::
    /// connect_with_connector_lazy`): TCP, then TLS with the client
    /// configuration current at each connection.
    pub fn connector(self: &Arc<Self>) -> TlsConnector {
        TlsConnector { tls: self.clone() }
    }
}

/// See [`Tls::connector`].
#[derive(Clone, Debug)]
pub struct TlsConnector {
    tls: Arc<Tls>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.client_config();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| format!("{uri}: no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            Ok(TokioIo::new(connect(config, &host, port).await?))
        })
    }
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// A new cluster CA, valid for `days` from now.
pub fn new_ca(common_name: &str, days: i64) -> anyhow::Result<Pem> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for a node (or a client) signed by `ca`: usable to serve
/// and to authenticate as a client, for the names and addresses in
/// `names`, valid from a day ago until `days` from now (a negative
/// `days` makes one that has expired, for tests).
pub fn new_cert(ca: &Pem, common_name: &str, names: &[String], days: i64) -> anyhow::Result<Pem> {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key).context("the CA key")?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key).context("the CA certificate")?;
    let mut p = rcgen::CertificateParams::new(names.to_vec())?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(2);
    p.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, ca: &Pem, p: &Pem) -> TlsFiles {
        let f = TlsFiles {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&f.ca, &ca.cert).unwrap();
        std::fs::write(&f.cert, &p.cert).unwrap();
        std::fs::write(&f.key, &p.key).unwrap();
        f
    }

    fn local() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into()]
    }

    /// A node's TLS from a certificate `ca` signed, valid for `days`.
    fn node(dir: &Path, name: &str, ca: &Pem, days: i64) -> Arc<Tls> {
        Tls::load(write(
            dir,
            name,
            ca,
            &new_cert(ca, name, &local(), days).unwrap(),
        ))
        .unwrap()
    }

    /// Sets the modification time of `paths` `secs` from now (file
    /// systems with coarse clocks: a rewrite is seen as a change).
    fn touch(paths: &[&PathBuf], secs: u64) {
        let at = SystemTime::now() + Duration::from_secs(secs);
        for p in paths {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
    }

    /// A server on `side` with `server`'s files; the result of one TLS
    /// connection to it with `client`'s, and the server's CN as seen.
    async fn handshake(server: &Arc<Tls>, side: Side, client: &Arc<Tls>) -> Result<(), String> {
        use futures_util::StreamExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut incoming = server.incoming(l, side);
        let mut c = client.connector();
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let client_side = tower::Service::call(&mut c, uri);
        let server_side = tokio::time::timeout(Duration::from_secs(2), incoming.next());
        let (c, s) = tokio::join!(client_side, server_side);
        let c = c.map_err(|e| e.to_string())?;
        // A refused client certificate shows on the server side only (the
        // client's handshake may finish first in TLS 1.3): the connection
        // is not handed to the server, and the client's first read fails.
        match s {
            Ok(Some(Ok(_))) => Ok(()),
            _ => {
                drop(c);
                Err("the server refused the connection".into())
            }
        }
    }

    #[tokio::test]
    async fn peers_need_a_certificate_of_the_cluster_ca_that_has_not_expired() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("kaon test CA", 30).unwrap();
        let other_ca = new_ca("another CA", 30).unwrap();
        let n1 = node(dir.path(), "n1", &ca, 30);
        let n2 = node(dir.path(), "n2", &ca, 30);
        handshake(&n1, Side::Peers, &n2)
            .await
            .expect("a peer of the same CA");
        // A certificate from another CA: refused as a peer (and it cannot
        // verify the server either).
        let stranger = node(dir.path(), "stranger", &other_ca, 30);
        assert!(handshake(&n1, Side::Peers, &stranger).await.is_err());
        // Same CA on both sides, but the client's certificate from the
        // other CA: the server refuses it.
        let mixed = write(
            dir.path(),
            "mixed",
            &ca,
            &new_cert(&other_ca, "x", &local(), 30).unwrap(),
        );
        let mixed = Tls::load(mixed).unwrap();
        assert!(handshake(&n1, Side::Peers, &mixed).await.is_err());
        // An expired certificate is refused.
        let expired = node(dir.path(), "expired", &ca, -1);
        assert!(handshake(&n1, Side::Peers, &expired).await.is_err());
        assert!(
            handshake(&expired, Side::Api, &n1).await.is_err(),
            "a server with an expired certificate is refused by clients"
        );
    }

    #[tokio::test]
    async fn plain_text_to_a_tls_port_is_refused_and_the_port_keeps_serving() {
        use futures_util::StreamExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("kaon test CA", 30).unwrap();
        let n1 = node(dir.path(), "n1", &ca, 30);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut incoming = n1.incoming(l, Side::Api);
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        // The server answers with a TLS alert or closes; it never speaks h2.
        let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert!(
            n == 0 || buf[0] == 0x15,
            "a TLS alert or nothing: {:?}",
            &buf[..n]
        );
        // A TLS client after it is served.
        let mut c = n1.connector();
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let (c, s) = tokio::join!(tower::Service::call(&mut c, uri), incoming.next());
        assert!(c.is_ok() && matches!(s, Some(Ok(_))));
    }

    #[tokio::test]
    async fn rotated_files_take_effect_for_new_connections_and_bad_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("kaon test CA", 30).unwrap();
        let files = write(
            dir.path(),
            "n1",
            &ca,
            &new_cert(&ca, "node-1", &local(), 30).unwrap(),
        );
        let n1 = Tls::load(files.clone()).unwrap();
        let peer = node(dir.path(), "n2", &ca, 30);
        // Rotate to an expired certificate: new handshakes fail.
        let expired = new_cert(&ca, "node-1", &local(), -1).unwrap();
        std::fs::write(&files.cert, &expired.cert).unwrap();
        std::fs::write(&files.key, &expired.key).unwrap();
        touch(&[&files.cert, &files.key], 3);
        assert!(n1.reload_if_changed());
        assert!(handshake(&n1, Side::Api, &peer).await.is_err());
        // A file that does not parse: the last good configuration stays.
        std::fs::write(&files.cert, "not a certificate").unwrap();
        touch(&[&files.cert], 6);
        assert!(!n1.reload_if_changed());
        // A good rotation: served again.
        let fresh = new_cert(&ca, "node-1", &local(), 30).unwrap();
        std::fs::write(&files.cert, &fresh.cert).unwrap();
        std::fs::write(&files.key, &fresh.key).unwrap();
        touch(&[&files.cert, &files.key], 9);
        assert!(n1.reload_if_changed());
        handshake(&n1, Side::Api, &peer)
            .await
            .expect("the new certificate serves");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("kaon test CA", 30).unwrap();
        let mut f = write(
            dir.path(),
            "n1",
            &ca,
            &new_cert(&ca, "n", &local(), 30).unwrap(),
        );
        std::fs::write(&f.key, "nope").unwrap();
        let e = format!("{:#}", Tls::load(f.clone()).unwrap_err());
        assert!(e.contains("--tls-key") && e.contains("n1.key"), "{e}");
        f.cert = dir.path().join("missing.pem");
        let e = format!("{:#}", Tls::load(f).unwrap_err());
        assert!(e.contains("--tls-cert") && e.contains("missing.pem"), "{e}");
    }
}
