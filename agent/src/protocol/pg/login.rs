//! The agent's own login upstream: TCP (and TLS where the backend has it), the startup with
//! the skill's passed parameters, SCRAM-SHA-256 (md5 or cleartext only where the credential
//! allows), the search_path check, and the catalog snapshot that masks find columns by and
//! that resolves the unqualified names of the session's statements.

use skillgate_policy::sql::LoginCatalog;

use super::*;

impl PgConn {
    /// Connects and authenticates upstream with the backend's credential; returns the
    /// connection, the backend's greeting after AuthenticationOk (ParameterStatus,
    /// BackendKeyData, ReadyForQuery) for the skill, and the session's cancel key.
    pub(super) async fn login(&self, params: &[(String, String)]) -> Result<Login, String> {
        let policy = &self.policy;
        let backend = policy
            .backend(&self.audit.backend)
            .ok_or("the backend is no longer in the policy")?;
        let name = backend.credentials.clone().ok_or_else(|| {
            format!(
                "backend `{}` names no credentials; the agent cannot log in",
                self.audit.backend
            )
        })?;
        let tls = backend.tls.clone();
        let credentials = self.audit.gate().credentials();
        let credential = credentials
            .get(&name)
            .ok_or_else(|| format!("credential `{name}` is not configured on this host"))?;
        let (user, password) = credential.login.clone().ok_or_else(|| {
            format!("credential `{name}` must be kind = \"basic\" (user:password) for PostgreSQL")
        })?;
        let mut server = self.upstream_stream(tls).await?;
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
                    let login = Credential {
                        name: &name,
                        user: &user,
                        password: &password,
                        allow_weak_auth: credential.allow_weak_auth,
                    };
                    if auth_answer(code, data, &login, &mut scram, &mut out)? {
                        return greet(server, inbox).await;
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

    /// The connection to the backend: TCP, then TLS when the backend has a `tls` table (after
    /// PostgreSQL's SSLRequest).
    async fn upstream_stream(
        &self,
        tls: Option<skillgate_policy::Tls>,
    ) -> Result<Box<dyn Stream>, String> {
        let tcp = crate::gate::connect_upstream(self.upstream, self.ctx.connect_timeout)
            .await
            .map_err(|err| err.to_string())?;
        let _ = tcp.set_nodelay(true);
        let server: Box<dyn Stream> = match tls {
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
                let to = crate::tls::Upstream::resolve(&tls, self.upstream, &self.policy.origin);
                let stream = self
                    .ctx
                    .tls
                    .connect(tcp, &to)
                    .await
                    .map_err(|err| format!("{err:#}"))?;
                Box::new(stream)
            }
        };
        Ok(server)
    }

    /// The catalog entries of every column a mask rule on this backend names, read as the
    /// agent before the skill gets the session: (table oid, column number) → (schema, table,
    /// column). Refuses a login whose search path is not `public` ([`SEARCH_PATH_QUERY`]).
    /// Also keeps what the catalog resolves unqualified names to ([`NAMES_QUERY`]), which
    /// every statement of the session is decided with.
    pub(super) async fn catalog(&self, server: &mut Box<dyn Stream>) -> Result<Catalog, String> {
        let policy = &self.policy;
        let mut names: Vec<String> = policy
            .rules
            .iter()
            .filter(|r| policy.backends[r.backend].name == self.audit.backend)
            .flat_map(|r| r.mask.columns.iter())
            .map(|c| column_name(c).to_owned())
            .collect();
        names.sort();
        names.dedup();
        let _ = self.catalog_names.set(names.clone());
        let mut catalog = Catalog::new();
        let mut login_catalog = LoginCatalog::default();
        // First, where the server resolves unqualified names; then what its catalog resolves
        // them to; then the masked columns.
        let mut sql = format!("{SEARCH_PATH_QUERY}; {NAMES_QUERY}");
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
        // Result sets completed so far: the search path's, the names', then the masks'.
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
                b'D' if completed == 1 => {
                    let row = wire::data_row(body).ok_or("bad catalog names row")?;
                    login_name(&mut login_catalog, &row)?;
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
                    login_catalog.add_masked_column(text(2)?, text(3)?, text(4)?);
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
                        "cannot read the backend's catalog (names, masked columns): {}",
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
                    let _ = self.login_catalog.set(login_catalog);
                    return Ok(catalog);
                }
                _ => {}
            }
        }
    }
}

/// After AuthenticationOk: collects what the backend sends up to its first ReadyForQuery.
/// The backend's credential, as the login uses it.
struct Credential<'a> {
    name: &'a str,
    user: &'a str,
    password: &'a str,
    allow_weak_auth: bool,
}

/// Writes into `out` what the agent answers the backend's authentication request `code`
/// (with `data`) with: SCRAM-SHA-256 (its state in `scram`), or md5 and cleartext where the
/// credential allows them. `Ok(true)`: authentication is done (AuthenticationOk).
fn auth_answer(
    code: i32,
    data: &[u8],
    login: &Credential<'_>,
    scram: &mut Option<ScramSha256>,
    out: &mut BytesMut,
) -> Result<bool, String> {
    match code {
        0 => return Ok(true),
        3 if login.allow_weak_auth => {
            frontend::password_message(login.password.as_bytes(), out)
                .map_err(|e| e.to_string())?;
        }
        5 if login.allow_weak_auth && data.len() == 4 => {
            let salt = [data[0], data[1], data[2], data[3]];
            let hash = postgres_protocol::authentication::md5_hash(
                login.user.as_bytes(),
                login.password.as_bytes(),
                salt,
            );
            frontend::password_message(hash.as_bytes(), out).map_err(|e| e.to_string())?;
        }
        3 | 5 => {
            return Err(format!(
                "the backend asks for {} authentication; only SCRAM-SHA-256 is \
                 used unless credential `{}` sets allow_weak_auth = true",
                if code == 3 { "cleartext" } else { "md5" },
                login.name
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
            let state = ScramSha256::new(login.password.as_bytes(), ChannelBinding::unsupported());
            frontend::sasl_initial_response(SCRAM_SHA_256, state.message(), out)
                .map_err(|e| e.to_string())?;
            *scram = Some(state);
        }
        11 => {
            let state = scram.as_mut().ok_or("unexpected SASLContinue")?;
            state
                .update(data)
                .map_err(|e| format!("SCRAM exchange failed: {e}"))?;
            frontend::sasl_response(state.message(), out).map_err(|e| e.to_string())?;
        }
        12 => {
            let state = scram.as_mut().ok_or("unexpected SASLFinal")?;
            // Verifies the server's signature: a fake backend cannot pass.
            state
                .finish(data)
                .map_err(|e| format!("the backend's SCRAM signature is wrong: {e}"))?;
        }
        other => {
            return Err(format!("unsupported authentication request {other}"));
        }
    }
    Ok(false)
}

pub(super) async fn greet(
    mut server: Box<dyn Stream>,
    mut inbox: BytesMut,
) -> Result<Login, String> {
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
pub(super) const SEARCH_PATH_QUERY: &str =
    "SELECT pg_catalog.array_to_string(pg_catalog.current_schemas(false), ',')";

/// What the catalog resolves unqualified names to (see [`LoginCatalog`]), one row per fact:
/// `f`/`o` and the name of a function (of any kind) or operator in the search path's own
/// schemas (`public`, as [`SEARCH_PATH_QUERY`] checks); `r` and a relation in `pg_catalog`;
/// `c`, schema, relation and column of each column named like such a function (where
/// `q.f` reads a column rather than calling `f(q)`; system columns included).
pub(super) const NAMES_QUERY: &str = "\
    WITH own AS (SELECT oid FROM pg_catalog.pg_namespace \
                 WHERE nspname OPERATOR(pg_catalog.=) ANY (pg_catalog.current_schemas(false)) \
                 AND nspname OPERATOR(pg_catalog.<>) 'pg_catalog'), \
         f AS (SELECT DISTINCT proname FROM pg_catalog.pg_proc \
               WHERE pronamespace OPERATOR(pg_catalog.=) ANY (SELECT oid FROM own)) \
    SELECT 'f', proname::pg_catalog.text, NULL, NULL FROM f \
    UNION ALL SELECT DISTINCT 'o', oprname::pg_catalog.text, NULL, NULL \
        FROM pg_catalog.pg_operator \
        WHERE oprnamespace OPERATOR(pg_catalog.=) ANY (SELECT oid FROM own) \
    UNION ALL SELECT 'r', relname::pg_catalog.text, NULL, NULL FROM pg_catalog.pg_class \
        WHERE relnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace \
    UNION ALL SELECT 'c', n.nspname::pg_catalog.text, c.relname::pg_catalog.text, \
        a.attname::pg_catalog.text \
        FROM pg_catalog.pg_attribute a \
        JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
        JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
        WHERE NOT a.attisdropped AND a.attname OPERATOR(pg_catalog.=) ANY (SELECT proname FROM f)";

/// One row of [`NAMES_QUERY`] into `catalog`.
fn login_name(catalog: &mut LoginCatalog, row: &[Option<&[u8]>]) -> Result<(), String> {
    let text = |i: usize| {
        row.get(i)
            .copied()
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok())
            .ok_or("bad catalog names row")
    };
    match text(0)? {
        "f" => catalog.add_function(text(1)?),
        "o" => catalog.add_operator(text(1)?),
        "r" => catalog.add_catalog_relation(text(1)?),
        "c" => catalog.add_column(text(1)?, text(2)?, text(3)?),
        _ => return Err("bad catalog names row".to_owned()),
    }
    Ok(())
}

/// A mask rule's column (`column`, `table.column` or `schema.table.column`): its column name.
pub(super) fn column_name(column: &str) -> &str {
    column.rsplit('.').next().unwrap_or(column)
}

pub(super) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The next whole backend message.
pub(super) async fn next<S: AsyncRead + Unpin>(
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
