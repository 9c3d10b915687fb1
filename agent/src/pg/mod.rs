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

mod masking;
mod session;
mod state;
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

use crate::config::SqlLiterals;
use crate::held::Held;
use crate::lock::Locked as _;
use crate::proxy::Proxy;
use crate::record::{self, Event, Facts};
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

/// One skill connection to a `postgres` backend.
///
/// Which policy it sees: the session is set up (token, upstream login, the mask catalog) by
/// the policy that let it connect; each statement is decided by the policy in force when it
/// arrives, so a reload takes effect at the next statement. A statement whose decision masks
/// a column name the login's catalog snapshot was not taken for (the reload added it) is
/// refused: its masked values could not be found by table and column number.
pub struct PgConn {
    pub proxy: Arc<Proxy>,
    /// The policy that let the session connect, which sets it up.
    policy: Arc<skillgate_policy::Policy>,
    /// The masked column names the catalog snapshot was taken for.
    catalog_names: std::sync::OnceLock<Vec<String>>,
    pub skill: String,
    pub backend: String,
    pub session: Option<i64>,
    pub upstream: SocketAddr,
    statements: AtomicU64,
    /// Groups the skill's token grants (set once it is validated).
    token_groups: std::sync::OnceLock<Vec<String>>,
    to_backend: AtomicU64,
    to_skill: AtomicU64,
}

impl PgConn {
    pub fn new(
        proxy: Arc<Proxy>,
        policy: Arc<skillgate_policy::Policy>,
        skill: String,
        backend: String,
        session: Option<i64>,
        upstream: SocketAddr,
    ) -> Self {
        Self {
            proxy,
            policy,
            catalog_names: std::sync::OnceLock::new(),
            skill,
            backend,
            session,
            upstream,
            statements: AtomicU64::new(0),
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
    pub async fn serve(self: Arc<Self>, mut tcp: TcpStream) -> (&'static str, (u64, u64)) {
        let _ = tcp.set_nodelay(true);
        let tls = self.proxy.pg_tls.clone();
        let (mut client, startup): (Box<dyn Stream>, _) =
            match wire::read_startup(&mut tcp, tls.is_some()).await {
                Ok(Startup::Tls) => {
                    let acceptor = tls.expect("TLS is offered only when configured");
                    let handshake = tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(tcp));
                    let mut client: Box<dyn Stream> = match handshake.await {
                        Ok(Ok(stream)) => Box::new(stream),
                        Ok(Err(err)) => {
                            warn!(error = %err, "PostgreSQL skill's TLS handshake failed");
                            return ("error", (0, 0));
                        }
                        Err(_) => {
                            warn!("PostgreSQL skill's TLS handshake timed out");
                            return ("error", (0, 0));
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
                return ("cancel", (0, 0));
            }
            Ok(Startup::Tls) => {
                self.fatal(&mut client, "08P01", "skillgate: SSLRequest inside TLS")
                    .await;
                return ("error", (0, 0));
            }
            Err(reason) => {
                self.fatal(&mut client, "08P01", &format!("skillgate: {reason}"))
                    .await;
                return ("error", (0, 0));
            }
        };
        let skill_user = param(&params, "user").unwrap_or("-").to_owned();
        if param(&params, "replication").is_some() {
            self.fatal(
                &mut client,
                "28000",
                "skillgate: replication connections are not allowed",
            )
            .await;
            return ("denied", (0, 0));
        }
        if let Some(encoding) = param(&params, "client_encoding")
            && !wire::reads_as_utf8(encoding)
        {
            let reason = format!(
                "client_encoding {encoding} is not supported: the agent reads statements as \
                 UTF-8 (use UTF8)"
            );
            warn!(skill_user = %skill_user, %reason, "PostgreSQL session refused");
            self.fatal(&mut client, "22023", &format!("skillgate: {reason}"))
                .await;
            return ("denied", (0, 0));
        }
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
                return ("denied", (0, 0));
            }
        }
        let (mut server, greeting, key) = match self.login(&params).await {
            Ok(login) => login,
            Err(reason) => {
                warn!(skill_user = %skill_user, %reason, "cannot log in to the PostgreSQL backend");
                self.fatal(&mut client, "08006", &format!("skillgate: {reason}"))
                    .await;
                return ("backend unreachable", (0, 0));
            }
        };
        // The catalog snapshot is taken before the skill gets the connection.
        let catalog = match self.catalog(&mut server).await {
            Ok(catalog) => catalog,
            Err(reason) => {
                self.fatal(&mut client, "08006", &format!("skillgate: {reason}"))
                    .await;
                return ("error", self.bytes());
            }
        };
        if let Some(key) = key {
            self.proxy.pg_cancel.lock().insert(key, self.upstream);
        }
        let mut hello = BytesMut::new();
        wire::put_message(&mut hello, b'R', &0i32.to_be_bytes());
        hello.extend_from_slice(&greeting);
        if client.write_all(&hello).await.is_err() {
            return ("closed", (0, 0));
        }
        info!(skill_user = %skill_user, database = param(&params, "database").unwrap_or("-"), "PostgreSQL session started");
        let session = Mutex::new(Session::default());
        let (client_read, client_write) = tokio::io::split(client);
        let (server_read, server_write) = tokio::io::split(server);
        let writer = tokio::sync::Mutex::new(client_write);
        let frontend = self.frontend(client_read, server_write, &writer, &session);
        let backend = self.backend_loop(server_read, &writer, &session, &catalog);
        tokio::pin!(frontend, backend);
        let outcome = tokio::select! {
            outcome = &mut frontend => outcome,
            outcome = &mut backend => outcome,
        };
        let outcome = if outcome == "terminated" {
            // The skill said goodbye after pipelining messages: the backend's answers to them
            // still go to it, until the backend closes (as it does after Terminate).
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut backend).await;
            "closed"
        } else {
            outcome
        };
        if let Some(key) = key {
            self.proxy.pg_cancel.lock().remove(&key);
        }
        (outcome, self.bytes())
    }

    /// A skill whose policy requires an OIDC token sends it as its password; returns the
    /// groups it grants (none for skills without the requirement).
    async fn authenticate_skill<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut S,
    ) -> Result<Vec<String>, String> {
        let policy = &self.policy;
        let Some(skill) = policy.skill(&self.skill).filter(|s| s.oidc.is_some()) else {
            return Ok(Vec::new());
        };
        // A token the agent holds for the skill: no password is asked.
        if let Some(token) = self.proxy.token_file(&self.skill) {
            let identity = self.proxy.identities.validate(skill, &token?).await;
            return identity.map(|i| i.groups).map_err(|why| why.to_string());
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
        let identity = self
            .proxy
            .identities
            .validate(skill, token)
            .await
            .map_err(|why| why.to_string())?;
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
        let target = self.proxy.pg_cancel.lock().get(&(pid, secret)).copied();
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

    /// Connects and authenticates upstream with the backend's credential.
    /// Connects and authenticates upstream with the backend's credential; returns the
    /// connection, the backend's greeting after AuthenticationOk (ParameterStatus,
    /// BackendKeyData, ReadyForQuery) for the skill, and the session's cancel key.
    async fn login(&self, params: &[(String, String)]) -> Result<Login, String> {
        let policy = &self.policy;
        let backend = policy
            .backend(&self.backend)
            .ok_or("the backend is no longer in the policy")?;
        let name = backend.credentials.clone().ok_or_else(|| {
            format!(
                "backend `{}` names no credentials; the agent cannot log in",
                self.backend
            )
        })?;
        let tls = backend.tls.clone();
        let credentials = self.proxy.credentials();
        let credential = credentials
            .get(&name)
            .ok_or_else(|| format!("credential `{name}` is not configured on this host"))?;
        let (user, password) = credential.login.clone().ok_or_else(|| {
            format!("credential `{name}` must be kind = \"basic\" (user:password) for PostgreSQL")
        })?;
        let tcp = crate::gate::connect_upstream(self.upstream, self.proxy.upstream_connect_timeout)
            .await
            .map_err(|err| err.to_string())?;
        let _ = tcp.set_nodelay(true);
        let mut server: Box<dyn Stream> = match tls {
            None => Box::new(tcp),
            Some(tls) => {
                let mut tcp = tcp;
                let mut buf = BytesMut::new();
                frontend::ssl_request(&mut buf);
                tcp.write_all(&buf).await.map_err(|e| e.to_string())?;
                let mut answer = [0u8; 1];
                tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer)
                    .await
                    .map_err(|e| format!("no answer to SSLRequest: {e}"))?;
                if answer[0] != b'S' {
                    return Err("the backend does not offer TLS".to_owned());
                }
                let to = crate::tls::Upstream::resolve(&tls, self.upstream, &policy.origin);
                let stream = self
                    .proxy
                    .tls
                    .connect(tcp, &to)
                    .await
                    .map_err(|err| format!("{err:#}"))?;
                Box::new(stream)
            }
        };
        let database = param(params, "database").unwrap_or(&user).to_owned();
        let mut startup: Vec<(&str, &str)> = vec![("user", &user), ("database", &database)];
        for (name, value) in params {
            if name != "database" && PASSED_PARAMETERS.contains(&name.as_str()) {
                startup.push((name, value));
            }
        }
        let mut buf = BytesMut::new();
        frontend::startup_message(startup.iter().copied(), &mut buf).map_err(|e| e.to_string())?;
        server.write_all(&buf).await.map_err(|e| e.to_string())?;
        let mut inbox = BytesMut::new();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let message = next(&mut server, &mut inbox).await?;
            let body = wire::body(&message);
            match message[0] {
                b'R' if body.len() >= 4 => {
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    let mut out = BytesMut::new();
                    match code {
                        0 => return greet(server, inbox).await,
                        3 if credential.allow_weak_auth => {
                            frontend::password_message(password.as_bytes(), &mut out)
                                .map_err(|e| e.to_string())?;
                        }
                        5 if credential.allow_weak_auth && data.len() == 4 => {
                            let salt = [data[0], data[1], data[2], data[3]];
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut out)
                                .map_err(|e| e.to_string())?;
                        }
                        3 | 5 => {
                            return Err(format!(
                                "the backend asks for {} authentication; only SCRAM-SHA-256 is \
                                 used unless credential `{name}` sets allow_weak_auth = true",
                                if code == 3 { "cleartext" } else { "md5" }
                            ));
                        }
                        10 => {
                            let mut rest = data;
                            let mut mechanisms = Vec::new();
                            while let Some(m) = wire::cstr(&mut rest).filter(|m| !m.is_empty()) {
                                mechanisms.push(m);
                            }
                            if !mechanisms.contains(&SCRAM_SHA_256) {
                                return Err(format!(
                                    "the backend offers SASL {mechanisms:?}, not SCRAM-SHA-256"
                                ));
                            }
                            let state = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response(
                                SCRAM_SHA_256,
                                state.message(),
                                &mut out,
                            )
                            .map_err(|e| e.to_string())?;
                            scram = Some(state);
                        }
                        11 => {
                            let state = scram.as_mut().ok_or("unexpected SASLContinue")?;
                            state
                                .update(data)
                                .map_err(|e| format!("SCRAM exchange failed: {e}"))?;
                            frontend::sasl_response(state.message(), &mut out)
                                .map_err(|e| e.to_string())?;
                        }
                        12 => {
                            let state = scram.as_mut().ok_or("unexpected SASLFinal")?;
                            // Verifies the server's signature: a fake backend cannot pass.
                            state.finish(data).map_err(|e| {
                                format!("the backend's SCRAM signature is wrong: {e}")
                            })?;
                        }
                        other => {
                            return Err(format!("unsupported authentication request {other}"));
                        }
                    }
                    if !out.is_empty() {
                        server.write_all(&out).await.map_err(|e| e.to_string())?;
                    }
                }
                b'E' => {
                    return Err(format!(
                        "the backend refused the agent's login: {}",
                        wire::error_message(body).unwrap_or("(no message)")
                    ));
                }
                b'N' => {}
                other => {
                    return Err(format!(
                        "unexpected message `{}` during login",
                        char::from(other).escape_default()
                    ));
                }
            }
        }
    }

    /// The catalog entries of every column a mask rule on this backend names, read as the
    /// agent before the skill gets the session: (table oid, column number) → (schema, table,
    /// column). Refuses a login whose search path is not `public` ([`SEARCH_PATH_QUERY`]).
    async fn catalog(&self, server: &mut Box<dyn Stream>) -> Result<Catalog, String> {
        let policy = &self.policy;
        let mut names: Vec<String> = policy
            .rules
            .iter()
            .filter(|r| policy.backends[r.backend].name == self.backend)
            .flat_map(|r| r.mask.columns.iter())
            .map(|c| column_name(c).to_owned())
            .collect();
        names.sort();
        names.dedup();
        let _ = self.catalog_names.set(names.clone());
        let mut catalog = Catalog::new();
        // First, where the server resolves unqualified names; then the masked columns.
        let mut sql = SEARCH_PATH_QUERY.to_owned();
        if !names.is_empty() {
            let list = names
                .iter()
                .map(|n| format!("'{}'", n.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(",");
            sql.push_str(&format!(
                "; SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attname IN ({list})"
            ));
        }
        let mut out = BytesMut::new();
        frontend::query(&sql, &mut out).map_err(|e| e.to_string())?;
        server.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut inbox = BytesMut::new();
        // Result sets completed so far: the search path's, then the catalog's.
        let mut completed = 0;
        let mut search_path = None;
        loop {
            let message = next(server, &mut inbox).await?;
            let body = wire::body(&message);
            match message[0] {
                b'C' => completed += 1,
                b'D' if completed == 0 => {
                    let row = wire::data_row(body).ok_or("bad search_path row")?;
                    let schemas = row.first().copied().flatten().map(String::from_utf8_lossy);
                    search_path = Some(schemas.unwrap_or_default().into_owned());
                }
                b'D' => {
                    let row = wire::data_row(body).ok_or("bad catalog row")?;
                    let text = |i: usize| {
                        row.get(i)
                            .copied()
                            .flatten()
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .ok_or("bad catalog row")
                    };
                    let oid: u32 = text(0)?.parse().map_err(|_| "bad catalog oid")?;
                    let attnum: i16 = text(1)?.parse().map_err(|_| "bad catalog attnum")?;
                    catalog.insert(
                        (oid, attnum),
                        [
                            text(2)?.to_owned(),
                            text(3)?.to_owned(),
                            text(4)?.to_owned(),
                        ],
                    );
                }
                b'E' => {
                    return Err(format!(
                        "cannot read the backend's catalog for masking: {}",
                        wire::error_message(body).unwrap_or("(no message)")
                    ));
                }
                b'Z' => {
                    if !inbox.is_empty() {
                        return Err("the backend sent more than asked".to_owned());
                    }
                    let search_path =
                        search_path.ok_or("the backend did not say its search_path")?;
                    if search_path != "public" {
                        return Err(format!(
                            "this login resolves unqualified names in schemas `{search_path}`, \
                             and the policy classifies them in `public` alone: set the login \
                             role's search_path to public (ALTER ROLE ... SET search_path = \
                             public) or drop the schemas before it"
                        ));
                    }
                    return Ok(catalog);
                }
                _ => {}
            }
        }
    }
}

type Login = (Box<dyn Stream>, BytesMut, Option<(i32, i32)>);

/// After AuthenticationOk: collects what the backend sends up to its first ReadyForQuery.
async fn greet(mut server: Box<dyn Stream>, mut inbox: BytesMut) -> Result<Login, String> {
    let mut greeting = BytesMut::new();
    let mut key = None;
    loop {
        let message = next(&mut server, &mut inbox).await?;
        let body = wire::body(&message);
        match message[0] {
            b'K' if body.len() == 8 => {
                key = Some((
                    i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                ));
                greeting.extend_from_slice(&message);
            }
            b'S' => {
                wire::parameter_status_safe(body)?;
                greeting.extend_from_slice(&message);
            }
            b'N' => greeting.extend_from_slice(&message),
            b'Z' => {
                greeting.extend_from_slice(&message);
                if !inbox.is_empty() {
                    return Err("the backend sent more than its greeting".to_owned());
                }
                return Ok((server, greeting, key));
            }
            b'E' => {
                return Err(format!(
                    "the backend refused the session: {}",
                    wire::error_message(body).unwrap_or("(no message)")
                ));
            }
            other => {
                return Err(format!(
                    "unexpected message `{}` after login",
                    char::from(other).escape_default()
                ));
            }
        }
    }
}

/// The schemas where the server resolves unqualified relation names (pg_catalog, always
/// searched first, aside): the classifier resolves them in `public`, so the session goes on
/// only if the server does too. `SET search_path` is never allowed afterwards.
const SEARCH_PATH_QUERY: &str =
    "SELECT pg_catalog.array_to_string(pg_catalog.current_schemas(false), ',')";

/// A mask rule's column (`column`, `table.column` or `schema.table.column`): its column name.
fn column_name(column: &str) -> &str {
    column.rsplit('.').next().unwrap_or(column)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The next whole backend message.
async fn next<S: AsyncRead + Unpin>(
    server: &mut S,
    inbox: &mut BytesMut,
) -> Result<BytesMut, String> {
    loop {
        if let Some(message) = wire::frame(inbox, wire::MAX_BACKEND_MESSAGE)? {
            return Ok(message);
        }
        if !wire::fill(server, inbox)
            .await
            .map_err(|e| format!("the backend connection failed: {e}"))?
        {
            return Err("the backend closed the connection".to_owned());
        }
    }
}

type ClientWriter<W> = tokio::sync::Mutex<W>;

impl PgConn {
    /// Classifies, decides (holding for approval if a rule says so) and records a statement;
    /// the answer carries the decision's id (`session.n`).
    async fn decide(&self, text: &str, prepared: bool) -> Decided {
        let n = self.statements.fetch_add(1, Ordering::Relaxed) + 1;
        let id = crate::gate::decision_id(self.session, n);
        let answer = self.answer(&id, text, prepared).await;
        Decided { id, answer }
    }

    /// `prepared`: the statement comes in a Parse, to run later with values bound then.
    async fn answer(&self, id: &str, text: &str, prepared: bool) -> Answer {
        let policy = self.proxy.current_policy();
        let classified = self.proxy.classify(text);
        let mut decision = match &classified.statements {
            Ok(statements) => policy.decide(&Request {
                skill: &self.skill,
                token_groups: self.token_groups.get().map_or(&[][..], Vec::as_slice),
                backend: &self.backend,
                operation: Operation::Sql(statements),
            }),
            Err(err) => Decision {
                effect: Effect::Deny,
                skill: None,
                backend: None,
                rule: None,
                rules: Vec::new(),
                mask: Mask::default(),
                // The parser's message may quote part of the statement.
                reason: skillgate_policy::mask::scrub(&format!(
                    "the statement cannot be classified: {err}"
                )),
                observed: None,
            },
        };
        // A prepared statement is decided at Parse, before its parameters exist, and may be
        // executed any number of times with any values: an approver would approve neither the
        // values nor how often. Held statements must come as a Query, values included.
        if prepared && decision.effect == Effect::Approve {
            decision.effect = Effect::Deny;
            decision.reason = format!(
                "{}, and a statement held for approval must be sent as a simple Query with its \
                 values: a prepared statement (Parse) would be approved before its parameters \
                 exist and could run again with any",
                decision.reason
            );
        }
        // Logs, the store and approvers see the statement with sensitive values masked.
        let shown = statement_text(&classified.scrubbed);
        // The store and the logs keep literals, or not, as the config says; an approver always
        // sees them (detector hits masked): the values are often what is being approved.
        let recorded = match self.proxy.sql_literals {
            SqlLiterals::Keep => shown.clone(),
            SqlLiterals::Redact => match skillgate_policy::sql::redact(text) {
                Some(redacted) => statement_text(&redacted),
                None => format!("(a statement the scanner refused, {} bytes)", text.len()),
            },
        };
        let rule = decision.rule.map(str::to_owned);
        let operation = crate::gate::Operation {
            kind: "sql",
            skill: &self.skill,
            backend: &self.backend,
            session: self.session,
            id,
            shown: &recorded,
        };
        let facts = Facts {
            classification: classification(&classified.statements),
            ..Facts::default()
        };
        if let Err(err) = crate::gate::decided(&self.proxy, &operation, &decision, facts).await {
            warn!(error = %format!("{err:#}"), "cannot record the statement: refusing it");
            return Answer::Deny {
                message:
                    "skillgate: the session store cannot record this statement, so it is refused"
                        .to_owned(),
                detail: format!("decision {id}"),
            };
        }
        let rule_text = rule.as_deref().unwrap_or("none (default deny)");
        match decision.effect {
            Effect::Allow | Effect::Mask | Effect::Approve
                if !self.catalog_covers(&decision.mask) =>
            {
                warn!(statement = %id, "statement refused: the policy in force masks columns this session's catalog snapshot was not taken for");
                Answer::Deny {
                    message: "skillgate: the policy now masks columns this session cannot find \
                              (it changed after the session began): reconnect"
                        .to_owned(),
                    detail: format!("rule: {rule_text}; decision {id}"),
                }
            }
            Effect::Allow | Effect::Mask => Answer::Allow(decision.mask),
            Effect::Deny => Answer::Deny {
                message: format!("skillgate: permission denied: {}", decision.reason),
                detail: format!("rule: {rule_text}; decision {id}"),
            },
            Effect::Approve => {
                let reason = decision.reason.clone();
                let held = Held {
                    kind: "sql",
                    skill: &self.skill,
                    backend: &self.backend,
                    rule: rule.as_deref(),
                    reason: &reason,
                    shown: classified.scrubbed.trim(),
                    exact: text.as_bytes(),
                    body: None,
                };
                self.hold(id, held, &recorded, decision.reason, decision.mask)
                    .await
            }
        }
    }

    /// Whether the login's catalog snapshot was taken for every column `mask` names.
    fn catalog_covers(&self, mask: &Mask) -> bool {
        let names = self.catalog_names.get().map_or(&[][..], Vec::as_slice);
        mask.columns.iter().all(|c| {
            names
                .binary_search_by(|n| n.as_str().cmp(column_name(c)))
                .is_ok()
        })
    }

    /// Holds a statement for approval: approvers see `held` (masked, its length and hash if
    /// cut), the store keeps `recorded`; if approved, it runs under `mask`.
    async fn hold(
        &self,
        id: &str,
        held: Held<'_>,
        recorded: &str,
        reason: String,
        mask: Mask,
    ) -> Answer {
        let Some(session) = self.session else {
            return Answer::Deny {
                message: format!("skillgate: approval required: {reason}"),
                detail: "held statements need a recorded session".to_owned(),
            };
        };
        let answered = match crate::gate::hold(&self.proxy, session, Some(id), recorded, held).await
        {
            Ok(answered) => answered,
            Err(err) => {
                warn!(error = %format!("{err:#}"), "cannot record the approval: refusing the statement");
                return Answer::Deny {
                    message: "skillgate: the session store cannot record this approval".to_owned(),
                    detail: format!("decision {id}"),
                };
            }
        };
        if answered.go {
            // Approved, and masked as an allowed statement would be.
            return Answer::Allow(mask);
        }
        Answer::Deny {
            message: format!(
                "skillgate: approval required ({}): {reason}",
                answered.answer
            ),
            detail: format!(
                "approval {}; {}; decision {id}",
                answered.approval, answered.why
            ),
        }
    }

    /// Skill → backend: every statement decided before it is forwarded.
    async fn frontend<R, S, W>(
        &self,
        mut client: R,
        mut server: S,
        writer: &ClientWriter<W>,
        session: &Mutex<Session>,
    ) -> &'static str
    where
        R: AsyncRead + Unpin,
        S: AsyncWrite + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut inbox = BytesMut::with_capacity(16 * 1024);
        let mut out = BytesMut::new();
        loop {
            loop {
                let message = match wire::frame(&mut inbox, wire::MAX_FRONTEND_MESSAGE) {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(reason) => return self.violation(writer, &reason).await,
                };
                // After an error in the extended protocol the server discards what comes
                // up to the next Sync: such a statement runs nothing and is not decided.
                let discarded = session.locked().discarding();
                let answer = match session::statement(&message) {
                    Ok(Some(_)) if discarded => {
                        debug!("statement discarded by the backend until Sync: not decided");
                        None
                    }
                    Ok(Some(text)) => {
                        let prepared = message.first() == Some(&b'P');
                        Some(self.decide(text, prepared).await)
                    }
                    Ok(None) => None,
                    Err(reason) => return self.violation(writer, &reason).await,
                };
                let taken = session.locked().client(&message, answer, &mut out);
                match taken {
                    Ok(false) => {}
                    Ok(true) => {
                        let _ = server.write_all(&out).await;
                        return "terminated";
                    }
                    Err(reason) => return self.violation(writer, &reason).await,
                }
            }
            if !out.is_empty() {
                if server.write_all(&out).await.is_err() {
                    return "error";
                }
                self.to_backend
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
                out.clear();
            }
            match wire::fill(&mut client, &mut inbox).await {
                Ok(true) => {}
                Ok(false) if inbox.is_empty() => return "closed",
                Ok(false) => {
                    return self
                        .violation(writer, "the connection ended inside a message")
                        .await;
                }
                Err(_) => return "error",
            }
        }
    }

    /// Ends the session on a protocol violation, nothing of it forwarded.
    async fn violation<W: AsyncWrite + Unpin>(
        &self,
        writer: &ClientWriter<W>,
        reason: &str,
    ) -> &'static str {
        warn!(%reason, "PostgreSQL protocol violation: ending the session");
        let mut out = BytesMut::new();
        wire::error_response(
            &mut out,
            "FATAL",
            "08P01",
            &format!("skillgate: protocol violation: {reason}"),
            None,
            None,
        );
        let _ = writer.lock().await.write_all(&out).await;
        "protocol violation"
    }

    /// Backend → skill: denied statements' errors rewritten, masked rows masked.
    async fn backend_loop<R, W>(
        &self,
        mut server: R,
        writer: &ClientWriter<W>,
        session: &Mutex<Session>,
        catalog: &Catalog,
    ) -> &'static str
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut inbox = BytesMut::with_capacity(64 * 1024);
        let mut out = BytesMut::new();
        let salt = &self.proxy.mask_salt;
        loop {
            let mut failed = None;
            {
                let mut session = session.locked();
                loop {
                    let message = match wire::frame(&mut inbox, wire::MAX_BACKEND_MESSAGE) {
                        Ok(Some(message)) => message,
                        Ok(None) => break,
                        Err(reason) => {
                            failed = Some(Ended {
                                code: "08P01",
                                reason: format!("malformed message from the backend: {reason}"),
                            });
                            break;
                        }
                    };
                    match session.server(&message, catalog, salt, &mut out) {
                        Ok(Some(noted)) => self.noted(noted),
                        Ok(None) => {}
                        Err(end) => {
                            failed = Some(end);
                            break;
                        }
                    }
                }
            }
            if let Some(Ended { code, reason }) = failed {
                warn!(%reason, "ending the PostgreSQL session");
                wire::error_response(
                    &mut out,
                    "FATAL",
                    code,
                    &format!("skillgate: the session ends: {reason}"),
                    None,
                    None,
                );
                let _ = writer.lock().await.write_all(&out).await;
                return if code == "42501" {
                    "masking failed"
                } else {
                    "error"
                };
            }
            if !out.is_empty() {
                if writer.lock().await.write_all(&out).await.is_err() {
                    return "error";
                }
                self.to_skill.fetch_add(out.len() as u64, Ordering::Relaxed);
                out.clear();
            }
            match wire::fill(&mut server, &mut inbox).await {
                Ok(true) => {}
                Ok(false) => return "backend closed",
                Err(_) => return "error",
            }
        }
    }

    /// Records (and counts) how a statement ended.
    fn noted(&self, noted: Noted) {
        match noted {
            Noted::Denied { detail, decision } => {
                let facts = Facts {
                    decision_id: decision,
                    status: Some("42501".to_owned()),
                    ..Facts::default()
                };
                self.result("denied", "42501", detail, facts);
            }
            Noted::Failed {
                code,
                message,
                took,
                decision,
            } => {
                let facts = Facts {
                    decision_id: decision,
                    status: Some(code.clone()),
                    duration_us: Some(took.as_micros() as i64),
                    ..Facts::default()
                };
                // A backend's message can quote values (`invalid input syntax for type
                // integer: "..."`): detector hits are masked, and nothing is kept of it when
                // literals are redacted.
                let message = match self.proxy.sql_literals {
                    SqlLiterals::Keep => skillgate_policy::mask::scrub(&message),
                    SqlLiterals::Redact => "(message not kept: sql_literals = redact)".to_owned(),
                };
                self.result("error", &code, message, facts);
            }
            Noted::Completed {
                tag,
                decision,
                masked,
                took,
                content,
            } => {
                self.proxy
                    .ops
                    .answered(&self.skill, &self.backend, "sql", took, masked);
                let facts = Facts {
                    decision_id: decision,
                    status: Some("00000".to_owned()),
                    rows: tag_rows(&tag),
                    masked: Some(masked as i64),
                    duration_us: Some(took.as_micros() as i64),
                    content: content.as_deref().map(record::kept),
                    ..Facts::default()
                };
                self.result(&tag, "ok", format!("{masked} values masked"), facts);
            }
        }
    }
}

impl PgConn {
    /// Records how a statement ended (not waited for: its decision is already recorded).
    fn result(&self, operation: &str, decision: &str, reason: String, facts: Facts) {
        if let Some(session) = self.session {
            self.proxy.recorder.event_detached(
                session,
                Event {
                    at_ns: record::now_ns(),
                    kind: "result".to_owned(),
                    operation: operation.to_owned(),
                    decision: decision.to_owned(),
                    rule: None,
                    reason,
                    facts,
                },
            );
        }
    }
}

/// What the policy saw in a statement, for the record: its accesses (`select public.orders,
/// function nextval`), or `unparsed`.
fn classification(
    statements: &Result<Vec<skillgate_policy::sql::Statement>, skillgate_policy::sql::SqlError>,
) -> Option<String> {
    let Ok(statements) = statements else {
        return Some("unparsed".to_owned());
    };
    let accesses: Vec<String> = statements
        .iter()
        .flat_map(|s| s.accesses.iter().map(ToString::to_string))
        .collect();
    (!accesses.is_empty()).then(|| accesses.join(", "))
}

/// The row count at the end of a command tag (`SELECT 10`, `INSERT 0 3`, `COPY 5`), if any.
fn tag_rows(tag: &str) -> Option<i64> {
    let (command, count) = tag.rsplit_once(' ')?;
    if command.is_empty() {
        return None;
    }
    count.parse().ok()
}

/// The statement as recorded and logged (bounded).
fn statement_text(text: &str) -> String {
    const MAX: usize = 4096;
    let text = text.trim();
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}
