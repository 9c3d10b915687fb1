//! The agent's own login upstream: TCP (and TLS where the backend has it), the startup with
//! the skill's passed parameters, SCRAM-SHA-256 (md5 or cleartext only where the credential
//! allows). The catalog snapshot taken right after is in `catalog.rs`.

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
        let mut server = self.upstream_stream(tls, &backend.upstream).await?;
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
        upstream: &skillgate_policy::Upstream,
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
                let to = crate::tls::Upstream::resolve(&tls, upstream, &self.policy.origin);
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
}

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

/// After AuthenticationOk: collects what the backend sends up to its first ReadyForQuery.
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
