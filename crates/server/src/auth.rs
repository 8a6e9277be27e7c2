//! Who may do what (issue 12): bearer tokens, roles, and the one table of
//! the role each API method needs.
//!
//! A node started with `--auth-file` authenticates every API call: the
//! caller presents `authorization: Bearer <token>`; the file maps the
//! token's SHA-256 to a principal and a role. Without the file the node
//! serves everyone as before (single-machine default), records no actor,
//! and says so at start.
//!
//! Roles are ordered: viewer (reads) < submitter (submit; cancel and retry
//! its own runs) < operator (any run, workflows, schedules) < admin
//! (membership, snapshots). [`required_role`] is the only place that says
//! which method needs which role; [`AuthLayer`] applies it to every call
//! before any handler runs, so a new RPC without a row is refused, never
//! open. The submitter's "own runs" rule needs the run, so the pure core
//! decides it ([`kaon_core::decide::Command::By`]).
//!
//! A follower forwards a write with the caller's `authorization` header,
//! and the leader authenticates it again: a forwarded call keeps the
//! caller's identity, never the forwarding node's, and a node cannot
//! lend its own rights to a caller.
//!
//! The tokens file is re-read when it changes (checked every
//! [`AUTH_FILE_RECHECK_MS`]); a file that no longer parses is refused with
//! an error in the log and the last good one stays in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use kaon_core::events::pb;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::codegen::http;

/// Request metadata the [`AuthLayer`] sets to how the caller
/// authenticated (any value a client sent is removed first): a follower
/// sends a certificate-authenticated caller to the leader instead of
/// forwarding (a certificate, unlike a token, cannot travel).
pub const AUTH_METHOD_HEADER: &str = "kaon-auth-method";

/// How often the tokens file is checked for changes, ms.
pub const AUTH_FILE_RECHECK_MS: u64 = 1_000;
/// Most tokens one file may hold (a named limit: the file is read into
/// memory on every change).
pub const AUTH_TOKENS_MAX: usize = 100_000;
/// Prefix of tokens `kaon token new` makes (recognisable in a leaked
/// paste; the server accepts any token whose hash is listed).
pub const TOKEN_PREFIX: &str = "kaon_";

/// What a principal may do. Ordered: each role may do what the ones
/// before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read workflows, runs, events, logs, schedules, cluster status.
    Viewer,
    /// Also submit runs, and cancel or retry the runs it submitted.
    Submitter,
    /// Also register workflows, cancel or retry any run, pause schedules.
    Operator,
    /// Also change membership, move leadership, take snapshots.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Submitter, Role::Operator, Role::Admin];

    /// The role's name as the tokens file and errors spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?} (roles: viewer, submitter, operator, admin)")
            })
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A bearer token listed (hashed) in the tokens file.
    Token,
    /// A client certificate the cluster CA signed (TLS), whose common
    /// name the tokens file lists under `certificates`.
    Certificate,
}

impl AuthMethod {
    fn name(self) -> &'static str {
        match self {
            AuthMethod::Token => "token",
            AuthMethod::Certificate => "certificate",
        }
    }
}

/// An authenticated caller, put in the request's extensions for the
/// handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Name from the tokens file.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// How it authenticated.
    pub method: AuthMethod,
}

impl Principal {
    /// What command events record about this caller.
    pub fn actor(&self) -> pb::Actor {
        pb::Actor {
            principal: self.name.clone(),
            method: self.method.name().to_string(),
            role: self.role.name().to_string(),
        }
    }
}

/// The role each API method needs, by gRPC path; `None` for methods open
/// to everyone (health checks, reflection: they reveal only the API's
/// shape and whether the node serves). Unknown paths need admin: a method
/// added without a row here is closed, not open.
pub fn required_role(path: &str) -> Option<Role> {
    if path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
    {
        return None;
    }
    let method = path.strip_prefix("/kaon.v1.Kaon/").unwrap_or("");
    Some(kaon_method_role(method).unwrap_or(Role::Admin))
}

/// The row of `kaon.v1.Kaon` method `method` (its bare name) in the table.
fn kaon_method_role(method: &str) -> Option<Role> {
    Some(match method {
        "ListWorkflows" | "GetWorkflow" | "GetRun" | "ListRuns" | "ReadEvents" | "WatchRun"
        | "ListSchedules" | "ClusterStatus" | "ReadStepLogs" | "ReadIndex" => Role::Viewer,
        // Cancel and retry: a submitter only its own runs (decided in the
        // core, against the run's recorded submitter).
        "SubmitRun" | "CancelRun" | "RetryRun" => Role::Submitter,
        "RegisterWorkflow" | "SetSchedulePaused" => Role::Operator,
        "InitCluster" | "AddNode" | "RemoveNode" | "TransferLeader" | "Snapshot" => Role::Admin,
        _ => return None,
    })
}

/// The hex SHA-256 of a token: what the tokens file stores.
pub fn token_sha256(token: &str) -> String {
    let d = Sha256::digest(token.trim().as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token (244 random bits from the OS, via UUID v4s).
pub fn new_token() -> String {
    format!(
        "{TOKEN_PREFIX}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The tokens file as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    /// Client certificates (signed by the cluster CA) by common name.
    #[serde(default)]
    certificates: Vec<CertEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CertEntry {
    common_name: String,
    role: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    principal: String,
    role: String,
    sha256: String,
}

/// What a tokens file says, checked.
#[derive(Debug, Default)]
struct Loaded {
    /// By hex SHA-256 of the token.
    tokens: HashMap<String, (String, Role)>,
    /// Roles of client certificates, by common name.
    certificates: HashMap<String, Role>,
    /// The file's modification time when read.
    modified: Option<SystemTime>,
}

/// Reads and checks a tokens file; errors name the file and the entry.
fn load(path: &Path) -> anyhow::Result<Loaded> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the tokens file {}", path.display()))?;
    let file: AuthFile = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("tokens file {}: not the expected YAML", path.display()))?;
    anyhow::ensure!(
        file.tokens.len() <= AUTH_TOKENS_MAX,
        "tokens file {}: {} tokens, more than {AUTH_TOKENS_MAX}",
        path.display(),
        file.tokens.len()
    );
    let mut tokens = HashMap::new();
    for (i, t) in file.tokens.into_iter().enumerate() {
        let at = || format!("tokens file {}: tokens[{i}]", path.display());
        let role = Role::parse(&t.role)
            .map_err(anyhow::Error::msg)
            .with_context(at)?;
        anyhow::ensure!(!t.principal.trim().is_empty(), "{}: empty principal", at());
        let sha = t.sha256.trim().to_ascii_lowercase();
        anyhow::ensure!(
            sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}: sha256 must be 64 hex digits (`kaon token new` prints the line)",
            at()
        );
        if tokens.insert(sha, (t.principal.clone(), role)).is_some() {
            anyhow::bail!("{}: the same token hash is listed twice", at());
        }
    }
    let mut certificates = HashMap::new();
    for (i, c) in file.certificates.into_iter().enumerate() {
        let at = || format!("tokens file {}: certificates[{i}]", path.display());
        let role = Role::parse(&c.role)
            .map_err(anyhow::Error::msg)
            .with_context(at)?;
        anyhow::ensure!(
            !c.common_name.trim().is_empty(),
            "{}: empty common_name",
            at()
        );
        if certificates.insert(c.common_name.clone(), role).is_some() {
            anyhow::bail!("{}: common name {:?} is listed twice", at(), c.common_name);
        }
    }
    Ok(Loaded {
        tokens,
        certificates,
        modified,
    })
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// Authenticates and authorizes API calls against a tokens file.
#[derive(Debug)]
pub struct Authenticator {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

impl Authenticator {
    /// Reads `path` (an error if it is missing or malformed: a node told
    /// to authenticate never starts open).
    pub fn load(path: &Path) -> anyhow::Result<Authenticator> {
        let loaded = load(path)?;
        tracing::info!(
            file = %path.display(),
            tokens = loaded.tokens.len(),
            "authentication on: every API call needs a token"
        );
        Ok(Authenticator {
            path: path.to_path_buf(),
            loaded: RwLock::new(loaded),
        })
    }

    /// Re-reads the file if its modification time changed; keeps the last
    /// good contents (and says why) when the new ones do not parse.
    /// Returns whether new contents took effect.
    pub fn reload_if_changed(&self) -> bool {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == self.loaded.read().expect("auth lock").modified {
            return false;
        }
        match load(&self.path) {
            Ok(l) => {
                tracing::info!(file = %self.path.display(), tokens = l.tokens.len(), "tokens file reloaded");
                *self.loaded.write().expect("auth lock") = l;
                true
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "tokens file not reloaded: the previous one stays in force"
                );
                // Do not retry the same broken file every second.
                self.loaded.write().expect("auth lock").modified = modified;
                false
            }
        }
    }

    /// Re-reads the file whenever it changes, until the runtime stops.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(AUTH_FILE_RECHECK_MS)).await;
                let Some(a) = me.upgrade() else { return };
                a.reload_if_changed();
            }
        });
    }

    /// Who presents these headers (a token wins), or this verified client
    /// certificate's common name: UNAUTHENTICATED without either, or with
    /// one the file does not list.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        cert_cn: Option<&str>,
    ) -> Result<Principal, Status> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            if let Some(cn) = cert_cn {
                let loaded = self.loaded.read().expect("auth lock");
                return match loaded.certificates.get(cn) {
                    Some(role) => Ok(Principal {
                        name: cn.to_string(),
                        role: *role,
                        method: AuthMethod::Certificate,
                    }),
                    None => Err(Status::unauthenticated(format!(
                        "the client certificate {cn:?} is not listed under `certificates` in this \
                         cluster's tokens file"
                    ))),
                };
            }
            return Err(Status::unauthenticated(
                "this cluster requires a token: pass --token or set KAON_TOKEN \
                 (gRPC metadata \"authorization: Bearer <token>\")",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be \"Bearer <token>\"")
            })?;
        let loaded = self.loaded.read().expect("auth lock");
        match loaded.tokens.get(&token_sha256(token)) {
            Some((name, role)) => Ok(Principal {
                name: name.clone(),
                role: *role,
                method: AuthMethod::Token,
            }),
            None => Err(Status::unauthenticated(
                "the token is not known to this cluster (mistyped, or removed from its tokens file)",
            )),
        }
    }

    /// The caller of `path`, if it may call it: `Ok(None)` for open
    /// methods; PERMISSION_DENIED naming the role needed.
    ///
    /// `cert_cn`: the common name of the client certificate the cluster CA
    /// verified on this connection, if any. A node's own certificate may
    /// ask for a read index (a follower's linearizable read on behalf of
    /// any authenticated caller): it reveals only a log position.
    pub fn authorize(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        cert_cn: Option<&str>,
    ) -> Result<Option<Principal>, Status> {
        let Some(needed) = required_role(path) else {
            return Ok(None);
        };
        if path == "/kaon.v1.Kaon/ReadIndex"
            && cert_cn.is_some()
            && !headers.contains_key(http::header::AUTHORIZATION)
        {
            return Ok(None);
        }
        let p = self.authenticate(headers, cert_cn)?;
        if p.role < needed {
            let method = path.rsplit('/').next().unwrap_or(path);
            return Err(Status::permission_denied(format!(
                "{} (role {}) may not call {method}: it needs the {} role",
                p.name,
                p.role.name(),
                needed.name()
            )));
        }
        Ok(Some(p))
    }
}

/// Applies an [`Authenticator`] to every call of a tonic server (see the
/// module docs); the authenticated [`Principal`] goes into the request's
/// extensions.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Option<Arc<Authenticator>>,
}

impl AuthLayer {
    /// `None`: everyone may do everything (no principal is recorded).
    pub fn new(auth: Option<Arc<Authenticator>>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(auth) = &self.auth {
            req.headers_mut().remove(AUTH_METHOD_HEADER);
            // The verified client certificate of a TLS connection.
            let cn =
                req.extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<
                        tonic::transport::server::TcpConnectInfo,
                    >>()
                    .and_then(|i| i.peer_certs())
                    .and_then(|certs| certs.first().and_then(|c| common_name(c)));
            match auth.authorize(req.uri().path(), req.headers(), cn.as_deref()) {
                Ok(Some(p)) => {
                    // Admin calls (membership, leadership, snapshots) are
                    // not events: the node's log says who made them.
                    if p.role == Role::Admin && required_role(req.uri().path()) == Some(Role::Admin)
                    {
                        tracing::info!(
                            principal = %p.name,
                            method = req.uri().path(),
                            "admin call"
                        );
                    }
                    req.headers_mut().insert(
                        AUTH_METHOD_HEADER,
                        http::HeaderValue::from_static(p.method.name()),
                    );
                    req.extensions_mut().insert(p);
                }
                Ok(None) => {}
                Err(status) => {
                    tracing::info!(
                        method = req.uri().path(),
                        code = ?status.code(),
                        "refused: {}",
                        status.message()
                    );
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        // The inner service was made ready for this call; a clone takes
        // its place for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_rustls::rustls::pki_types::pem::PemObject;

    fn file(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("tokens.yaml");
        std::fs::write(&p, body).unwrap();
        p
    }

    fn bearer(t: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn every_kaon_method_has_a_role_and_unknown_ones_need_admin() {
        for (m, r) in [
            ("GetRun", Role::Viewer),
            ("SubmitRun", Role::Submitter),
            ("CancelRun", Role::Submitter),
            ("RegisterWorkflow", Role::Operator),
            ("AddNode", Role::Admin),
            ("SomethingNew", Role::Admin),
        ] {
            assert_eq!(required_role(&format!("/kaon.v1.Kaon/{m}")), Some(r), "{m}");
        }
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(required_role("/other.Service/Call"), Some(Role::Admin));
    }

    #[test]
    fn every_rpc_of_the_api_has_its_own_row() {
        let proto = include_str!("../../../proto/kaon/v1/api.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap().trim())
            .collect();
        assert!(rpcs.len() >= 19, "{rpcs:?}");
        for m in rpcs {
            assert!(
                kaon_method_role(m).is_some(),
                "kaon.v1.Kaon/{m} has no row in the role table (it would need admin)"
            );
        }
    }

    #[test]
    fn tokens_authenticate_roles_authorize_and_errors_say_what_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, v) = (new_token(), new_token());
        let p = file(
            dir.path(),
            &format!(
                "tokens:\n  - {{principal: alice, role: submitter, sha256: {}}}\n  - {{principal: vic, role: viewer, sha256: {}}}\n",
                token_sha256(&a),
                token_sha256(&v)
            ),
        );
        let auth = Authenticator::load(&p).unwrap();
        let alice = auth
            .authorize("/kaon.v1.Kaon/SubmitRun", &bearer(&a), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (alice.name.as_str(), alice.role),
            ("alice", Role::Submitter)
        );
        let denied = auth
            .authorize("/kaon.v1.Kaon/SubmitRun", &bearer(&v), None)
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("vic (role viewer)")
                && denied.message().contains("needs the submitter role"),
            "{}",
            denied.message()
        );
        let none = auth
            .authorize("/kaon.v1.Kaon/GetRun", &http::HeaderMap::new(), None)
            .unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        assert!(none.message().contains("--token"), "{}", none.message());
        let wrong = auth
            .authorize("/kaon.v1.Kaon/GetRun", &bearer("kaon_nope"), None)
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            auth.authorize(
                "/grpc.health.v1.Health/Check",
                &http::HeaderMap::new(),
                None
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn a_changed_file_takes_effect_and_a_broken_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let t = new_token();
        let line = |role: &str| {
            format!(
                "tokens:\n  - {{principal: bob, role: {role}, sha256: {}}}\n",
                token_sha256(&t)
            )
        };
        let p = file(dir.path(), &line("viewer"));
        let auth = Authenticator::load(&p).unwrap();
        assert!(
            auth.authorize("/kaon.v1.Kaon/AddNode", &bearer(&t), None)
                .is_err()
        );
        // A later modification time (file systems with coarse clocks).
        let later = |p: &Path| {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(SystemTime::now() + Duration::from_secs(5))
                .unwrap();
        };
        std::fs::write(&p, line("admin")).unwrap();
        later(&p);
        assert!(auth.reload_if_changed());
        assert!(
            auth.authorize("/kaon.v1.Kaon/AddNode", &bearer(&t), None)
                .is_ok()
        );
        std::fs::write(&p, "tokens: [{principal: bob, role: king, sha256: x}]\n").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(10))
            .unwrap();
        assert!(!auth.reload_if_changed());
        assert!(
            auth.authorize("/kaon.v1.Kaon/AddNode", &bearer(&t), None)
                .is_ok(),
            "the last good file stays in force"
        );
    }

    #[test]
    fn a_listed_client_certificate_is_a_principal_and_a_token_wins() {
        let dir = tempfile::tempdir().unwrap();
        let t = new_token();
        let p = file(
            dir.path(),
            &format!(
                "tokens:\n  - {{principal: tok, role: viewer, sha256: {}}}\ncertificates:\n  - {{common_name: ci, role: operator}}\n",
                token_sha256(&t)
            ),
        );
        let auth = Authenticator::load(&p).unwrap();
        let none = http::HeaderMap::new();
        let ci = auth
            .authorize("/kaon.v1.Kaon/RegisterWorkflow", &none, Some("ci"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (ci.name.as_str(), ci.role, ci.method),
            ("ci", Role::Operator, AuthMethod::Certificate)
        );
        let e = auth
            .authorize("/kaon.v1.Kaon/GetRun", &none, Some("other"))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let tok = auth
            .authorize("/kaon.v1.Kaon/GetRun", &bearer(&t), Some("ci"))
            .unwrap()
            .unwrap();
        assert_eq!(
            tok.name, "tok",
            "a token wins over the connection's certificate"
        );
        // A node's certificate may ask for a read index, nothing else.
        assert_eq!(
            auth.authorize("/kaon.v1.Kaon/ReadIndex", &none, Some("node-2"))
                .unwrap(),
            None
        );
        assert!(
            auth.authorize("/kaon.v1.Kaon/GetRun", &none, Some("node-2"))
                .is_err()
        );
        let pem =
            kaon_log::tls::new_cert(&kaon_log::tls::new_ca("ca", 1).unwrap(), "ci-bot", &[], 1)
                .unwrap();
        let der =
            tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(pem.cert.as_bytes())
                .unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("ci-bot"));
    }

    #[test]
    fn a_malformed_file_is_refused_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(
            dir.path(),
            "tokens:\n  - {principal: a, role: viewer, sha256: 00}\n",
        );
        let e = format!("{:#}", Authenticator::load(&p).unwrap_err());
        assert!(e.contains("tokens[0]") && e.contains("64 hex"), "{e}");
        let p = file(
            dir.path(),
            "tokens:\n  - {principal: a, role: root, sha256: 00}\n",
        );
        let e = format!("{:#}", Authenticator::load(&p).unwrap_err());
        assert!(e.contains("unknown role \"root\""), "{e}");
    }
}
