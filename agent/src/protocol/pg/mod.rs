//! PostgreSQL backends: a v3 wire-protocol proxy that decides every statement, authenticates
//! upstream with credentials only the agent holds, and masks result rows.
//!
//! A skill connects with any user name and gets `AuthenticationOk` once the agent has logged in
//! upstream (SCRAM-SHA-256; md5 or cleartext only where the credential allows it). From then
//! on every Query and Parse is classified (PostgreSQL's parser, cached) and decided:
//!
//! - allowed statements are forwarded as they are;
//! - denied ones are replaced by a statement that fails to parse upstream, carrying a nonce;
//!   the backend answers it with an error in its proper place in the stream (after the
//!   responses to everything sent before, with the transaction and extended-protocol error
//!   state PostgreSQL itself keeps), and the agent rewrites that error into SQLSTATE 42501 with
//!   the reason and the rule. No denied statement reaches the backend's executor.
//! - statements an `approve` rule covers are held until approved (forwarded) or not (denied).
//!
//! Every backend reply is matched to the frontend message it answers, following the server's
//! protocol state (`state.rs`: in-order answers, skip-till-Sync after an extended-protocol
//! error, COPY); a reply the state does not expect ends the session. Masking: a statement
//! decided with a mask masks its own rows, and while one is in flight or ran in the server's
//! current transaction, errors and notices are reduced to their SQLSTATE (notifications lose
//! their payload). Columns are identified by the RowDescription's table oid and column number
//! against a catalog snapshot taken at login (so an alias does not unmask a column), by name,
//! and computed columns are masked when the statement mentions a masked column. A row that
//! must be masked but cannot be (no RowDescription for it, a binary-format masked column) ends
//! the session with an error: an unmasked value is never sent.

mod catalog;
mod decide;
mod login;
pub mod masking;
mod pumps;
pub mod session;
pub mod state;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use skillgate_policy::{Decision, Effect, Mask, Operation, Request};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use self::catalog::column_name;
use self::login::param;
use crate::config::SqlLiterals;
use crate::gate::held::Held;
use crate::gate::{Audit, End, Op, Refusal, Refused, Verdict};
use crate::lock::Locked as _;
use crate::record::{self, Facts, Kind};
use session::{Answer, Catalog, Decided, Ended, Noted, Session};
use wire::Startup;

/// How long a skill has to complete its TLS handshake after SSLRequest.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Startup parameters passed upstream; everything else (notably `options`, which could set
/// search_path or session settings behind the policy's back) is dropped.
const PASSED_PARAMETERS: &[&str] = &[
    "database",
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "extra_float_digits",
    "IntervalStyle",
];

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where each live session's cancel key leads: skills may cancel only their own queries.
#[derive(Default)]
pub struct CancelKeys(Mutex<HashMap<(i32, i32), SocketAddr>>);

impl CancelKeys {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), SocketAddr>> {
        self.0.locked()
    }
}

/// What every connection to a `postgres` backend shares.
pub struct PgContext {
    pub connect_timeout: Duration,
    /// The salt of hashed masks.
    pub mask_salt: Vec<u8>,
    /// TLS client configurations for backends reached over TLS.
    pub tls: Arc<crate::tls::Connectors>,
    /// TLS for skills that ask for it, when a certificate is configured.
    pub tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// Live sessions' cancel keys → their backends.
    pub cancel: CancelKeys,
    /// SQL classifications of recent statement texts.
    pub sql_cache: Mutex<skillgate_policy::sql::Cache>,
    /// Whether recorded SQL keeps its literals.
    pub sql_literals: SqlLiterals,
}

impl PgContext {
    /// Classifies SQL through the shared cache (a repeated statement is not parsed again).
    pub fn classify(&self, sql: &str) -> Arc<skillgate_policy::sql::Classified> {
        self.sql_cache.locked().classify(sql)
    }
}

/// One skill connection to a `postgres` backend.
///
/// Which policy it sees: the session is set up (token, upstream login, the mask catalog) by
/// the policy that let it connect; each statement is decided by the policy in force when it
/// arrives, so a reload takes effect at the next statement. A statement whose decision masks
/// a column name the login's catalog snapshot was not taken for (the reload added it) is
/// refused: its masked values could not be found by table and column number.
pub struct PgConn {
    ctx: Arc<PgContext>,
    audit: Arc<Audit>,
    /// The policy that let the session connect, which sets it up.
    policy: Arc<skillgate_policy::Policy>,
    /// The masked column names the catalog snapshot was taken for.
    catalog_names: std::sync::OnceLock<Vec<String>>,
    /// How the login's catalog resolves unqualified names (set at login, before any
    /// statement is decided).
    login_catalog: std::sync::OnceLock<skillgate_policy::sql::LoginCatalog>,
    upstream: SocketAddr,
    /// Groups the skill's token grants (set once it is validated).
    token_groups: std::sync::OnceLock<Vec<String>>,
    to_backend: AtomicU64,
    to_skill: AtomicU64,
}

impl PgConn {
    pub fn new(
        ctx: Arc<PgContext>,
        audit: Arc<Audit>,
        policy: Arc<skillgate_policy::Policy>,
        upstream: SocketAddr,
    ) -> Self {
        Self {
            ctx,
            audit,
            policy,
            catalog_names: std::sync::OnceLock::new(),
            login_catalog: std::sync::OnceLock::new(),
            upstream,
            token_groups: std::sync::OnceLock::new(),
            to_backend: AtomicU64::new(0),
            to_skill: AtomicU64::new(0),
        }
    }

    fn bytes(&self) -> (u64, u64) {
        (
            self.to_backend.load(Ordering::Relaxed),
            self.to_skill.load(Ordering::Relaxed),
        )
    }

    /// Serves the skill's connection; returns the outcome and the bytes moved.
    pub async fn serve(self: Arc<Self>, tcp: TcpStream) -> (End, (u64, u64)) {
        let (mut client, params) = match self.startup(tcp).await {
            Ok(started) => started,
            Err(outcome) => return (outcome, (0, 0)),
        };
        let skill_user = param(&params, "user").unwrap_or("-").to_owned();
        match self.authenticate_skill(&mut client).await {
            Ok(groups) => {
                let _ = self.token_groups.set(groups);
            }
            Err(reason) => {
                warn!(skill_user = %skill_user, %reason, "PostgreSQL session refused: token");
                let facts = Facts {
                    status: Some("28000".to_owned()),
                    ..Facts::default()
                };
                self.result("identity", "denied", reason.clone(), facts);
                self.fatal(
                    &mut client,
                    "28000",
                    &format!("skillgate: token refused: {reason}"),
                )
                .await;
                return (End::Denied, (0, 0));
            }
        }
        let (mut server, greeting, key) = match self.login(&params).await {
            Ok(login) => login,
            Err(reason) => {
                warn!(skill_user = %skill_user, %reason, "cannot log in to the PostgreSQL backend");
                self.fatal(&mut client, "08006", &format!("skillgate: {reason}"))
                    .await;
                return (End::BackendUnreachable, (0, 0));
            }
        };
        // The catalog snapshot is taken before the skill gets the connection.
        let catalog = match self.catalog(&mut server).await {
            Ok(catalog) => catalog,
            Err(reason) => {
                self.fatal(&mut client, "08006", &format!("skillgate: {reason}"))
                    .await;
                return (End::Error, self.bytes());
            }
        };
        let mut hello = BytesMut::new();
        wire::put_message(&mut hello, b'R', &0i32.to_be_bytes());
        hello.extend_from_slice(&greeting);
        if client.write_all(&hello).await.is_err() {
            return (End::Closed, (0, 0));
        }
        info!(skill_user = %skill_user, database = param(&params, "database").unwrap_or("-"), "PostgreSQL session started");
        if let Some(key) = key {
            self.ctx.cancel.lock().insert(key, self.upstream);
        }
        let outcome = self.relay(client, server, &catalog).await;
        if let Some(key) = key {
            self.ctx.cancel.lock().remove(&key);
        }
        (outcome, self.bytes())
    }

    /// Reads the skill's startup (after a TLS handshake if it asks for one and the agent
    /// offers it) and refuses what the agent does not serve: a cancel request is forwarded
    /// here, replication and encodings other than UTF-8 are refused. The skill's stream and
    /// its startup parameters; `Err`: how the connection ended.
    async fn startup(
        &self,
        mut tcp: TcpStream,
    ) -> Result<(Box<dyn Stream>, Vec<(String, String)>), End> {
        let _ = tcp.set_nodelay(true);
        let tls = self.ctx.tls_acceptor.clone();
        let (mut client, startup): (Box<dyn Stream>, _) =
            match wire::read_startup(&mut tcp, tls.is_some()).await {
                Ok(Startup::Tls) => {
                    let acceptor = tls.expect("TLS is offered only when configured");
                    let handshake = tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(tcp));
                    let mut client: Box<dyn Stream> = match handshake.await {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(err)) => {
                            warn!(error = %err, "PostgreSQL skill's TLS handshake failed");
                            return Err(End::Error);
                        }
                        Err(_) => {
                            warn!("PostgreSQL skill's TLS handshake timed out");
                            return Err(End::Error);
                        }
                    };
                    let startup = wire::read_startup(&mut client, false).await;
                    (client, startup)
                }
                other => (Box::new(tcp), other),
            };
        let params = match startup {
            Ok(Startup::Session(params)) => params,
            Ok(Startup::Cancel { pid, secret }) => {
                self.cancel(pid, secret).await;
                return Err(End::Cancel);
            }
            Ok(Startup::Tls) => {
                self.fatal(&mut client, "08P01", "skillgate: SSLRequest inside TLS")
                    .await;
                return Err(End::Error);
            }
            Err(reason) => {
                self.fatal(&mut client, "08P01", &format!("skillgate: {reason}"))
                    .await;
                return Err(End::Error);
            }
        };
        if param(&params, "replication").is_some() {
            self.fatal(
                &mut client,
                "28000",
                "skillgate: replication connections are not allowed",
            )
            .await;
            return Err(End::Denied);
        }
        if let Some(encoding) = param(&params, "client_encoding")
            && !wire::reads_as_utf8(encoding)
        {
            let reason = format!(
                "client_encoding {encoding} is not supported: the agent reads statements as \
                 UTF-8 (use UTF8)"
            );
            let skill_user = param(&params, "user").unwrap_or("-");
            warn!(skill_user = %skill_user, %reason, "PostgreSQL session refused");
            self.fatal(&mut client, "22023", &format!("skillgate: {reason}"))
                .await;
            return Err(End::Denied);
        }
        Ok((client, params))
    }

    /// Runs the session: the skill's messages through the policy to the backend, the
    /// backend's replies (masked) to the skill, until either side ends it; how it ended.
    async fn relay(
        &self,
        client: Box<dyn Stream>,
        server: Box<dyn Stream>,
        catalog: &Catalog,
    ) -> End {
        let session = Mutex::new(Session::default());
        let (client_read, client_write) = tokio::io::split(client);
        let (server_read, server_write) = tokio::io::split(server);
        let writer = tokio::sync::Mutex::new(client_write);
        let frontend = self.frontend(client_read, server_write, &writer, &session);
        let backend = self.backend_loop(server_read, &writer, &session, catalog);
        tokio::pin!(frontend, backend);
        let outcome = tokio::select! {
            outcome = &mut frontend => outcome,
            outcome = &mut backend => outcome,
        };
        if outcome == End::Terminated {
            // The skill said goodbye after pipelining messages: the backend's answers to them
            // still go to it, until the backend closes (as it does after Terminate).
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut backend).await;
            return End::Closed;
        }
        outcome
    }

    /// A skill whose policy requires an OIDC token sends it as its password; returns the
    /// groups it grants (none for skills without the requirement).
    async fn authenticate_skill<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut S,
    ) -> Result<Vec<String>, String> {
        let policy = &self.policy;
        let Some(skill) = policy.skill(&self.audit.skill).filter(|s| s.oidc.is_some()) else {
            return Ok(Vec::new());
        };
        let gate = self.audit.gate();
        // A token the agent holds for the skill: no password is asked.
        if gate.holds_token(&skill.name) {
            return gate.identify(skill, None).await.map(|i| i.groups);
        }
        let mut ask = BytesMut::new();
        wire::put_message(&mut ask, b'R', &3i32.to_be_bytes());
        client.write_all(&ask).await.map_err(|e| e.to_string())?;
        let mut inbox = BytesMut::new();
        let message = loop {
            if let Some(message) = wire::frame(&mut inbox, 16 * 1024)? {
                break message;
            }
            if !wire::fill(client, &mut inbox)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err("missing token: the connection ended before a password".to_owned());
            }
        };
        if message[0] != b'p' {
            return Err("missing token: expected a password message".to_owned());
        }
        let token = wire::query_text(wire::body(&message)).ok_or("malformed password message")?;
        if token.is_empty() {
            return Err("missing token: the password is empty".to_owned());
        }
        let identity = gate.identify(skill, Some(token)).await?;
        info!(subject = %identity.subject, groups = ?identity.groups, "skill token accepted");
        Ok(identity.groups)
    }

    async fn fatal<W: AsyncWrite + Unpin>(&self, client: &mut W, code: &str, message: &str) {
        let mut out = BytesMut::new();
        wire::error_response(&mut out, "FATAL", code, message, None, None);
        let _ = client.write_all(&out).await;
    }

    /// Forwards a cancel request whose key belongs to a live session of this agent.
    async fn cancel(&self, pid: i32, secret: i32) {
        let target = self.ctx.cancel.lock().get(&(pid, secret)).copied();
        let Some(upstream) = target else {
            warn!(pid, "cancel request for an unknown session: ignored");
            return;
        };
        let mut buf = BytesMut::new();
        frontend::cancel_request(pid, secret, &mut buf);
        match TcpStream::connect(upstream).await {
            Ok(mut stream) => {
                let _ = stream.write_all(&buf).await;
                info!(pid, %upstream, "cancel request forwarded");
            }
            Err(err) => warn!(%upstream, error = %err, "cannot forward a cancel request"),
        }
    }
}

type Login = (Box<dyn Stream>, BytesMut, Option<(i32, i32)>);

type ClientWriter<W> = tokio::sync::Mutex<W>;
