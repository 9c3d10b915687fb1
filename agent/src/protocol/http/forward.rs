//! Forwarding an allowed request: an upstream connection from the pool (or a new one, TLS
//! where the backend has it), the agent's credential injected, and the response relayed, or
//! read whole and masked, with the credential scrubbed from what comes back.

use super::*;

impl HttpConn {
    /// Sends the request upstream and relays (or masks) the response.
    pub(super) async fn forward(
        &self,
        request: Request<ProxyBody>,
        decided: &Decided,
        path: &str,
        host: &str,
        credential: Option<&str>,
        mask: &Mask,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let credentials = self.audit.gate().credentials();
        let credential = match credential {
            Some(name) => match credentials.get(name) {
                Some(credential) => Some(credential),
                None => {
                    warn!(
                        credential = name,
                        "the backend's credential is not configured"
                    );
                    let reason = format!("credential `{name}` is not configured on this host");
                    return self
                        .failed(decided, StatusCode::BAD_GATEWAY, &reason, started)
                        .await;
                }
            },
            None => None,
        };
        // The body must be read as it is: to be masked, or scanned for an injected credential
        // (an S3 key signs, it is never sent: S3 bodies stream, ranges and encodings kept).
        // (MCP answers are read message by message, so they must come as they are.)
        let whole =
            mask.masks_body() || (credential.is_some() && self.s3.is_none()) || self.mcp.is_some();
        let (parts, body) = request.into_parts();
        let mut headers = head::upstream_headers(
            &parts.headers,
            &self.audit.gate().token_header,
            host,
            credential.and_then(|c| c.header.as_ref().map(|(name, value)| (name, value))),
            whole,
        );
        let mut body = body;
        // Why a chunk-signed upload was cut, if it is.
        let mut cut: Option<s3::Cut> = None;
        if let Some(s3) = &self.s3 {
            let signed = match credential.and_then(|c| c.aws.as_ref()) {
                Some(key) => s3::sign(&mut headers, parts.method.as_str(), path, &s3.region, key),
                None => Err("the backend's credential is not an `aws` key".to_owned()),
            };
            let chain = match signed {
                Ok(chain) => chain,
                Err(reason) => {
                    return self
                        .failed(decided, StatusCode::BAD_GATEWAY, &reason, started)
                        .await;
                }
            };
            if headers
                .get("x-amz-content-sha256")
                .is_some_and(|v| v == s3::STREAMING)
            {
                let (resigned, why) = s3::Resigned::new(body, chain);
                body = resigned.boxed();
                cut = Some(why);
            }
        }
        let mut upstream = Request::builder()
            .method(parts.method)
            .uri(path)
            .version(hyper::Version::HTTP_11);
        *upstream.headers_mut().expect("a fresh builder has headers") = headers;
        let body = Relay::new(body, Arc::clone(&self.to_backend), Vec::new());
        let upstream = match upstream.body(body) {
            Ok(upstream) => upstream,
            Err(err) => {
                return self.error_response(
                    StatusCode::BAD_REQUEST,
                    &decided.id,
                    &format!("cannot rebuild the request: {err}"),
                );
            }
        };
        let sent = self.send(upstream).await;
        if let Some(reason) = cut.as_ref().and_then(|cut| cut.get()) {
            warn!(request = %decided.id, %reason, "chunk-signed upload cut");
            return self
                .failed(decided, StatusCode::BAD_REQUEST, reason, started)
                .await;
        }
        let (response, lease) = match sent {
            Ok(sent) => sent,
            Err((status, reason)) => {
                warn!(request = %decided.id, upstream = %self.upstream, %reason, "backend failed");
                return self.failed(decided, status, &reason, started).await;
            }
        };
        let secrets = credential.map(|c| c.needles.as_slice());
        self.respond(decided, (response, lease), secrets, mask, started)
            .await
    }

    /// Answers the skill with the backend's response: relayed as it streams, or read whole to
    /// be masked or, where the agent injected a credential, scanned for its forms (`secrets`),
    /// which are scrubbed either way; withheld when it cannot be.
    async fn respond(
        &self,
        decided: &Decided,
        (response, lease): (Response<Incoming>, Lease),
        secrets: Option<&[Vec<u8>]>,
        mask: &Mask,
        started: Instant,
    ) -> Response<ProxyBody> {
        let whole = mask.masks_body() || (secrets.is_some() && self.s3.is_none());
        let secrets = secrets.unwrap_or_default();
        if self.mcp.is_some() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return self
                .mcp_respond(decided, (response, lease), secrets, started)
                .await;
        }
        let (mut parts, body) = response.into_parts();
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            let reason = "the backend switched protocols; upgrades are not allowed";
            return self
                .failed(decided, StatusCode::BAD_GATEWAY, reason, started)
                .await;
        }
        if whole && let Some(why) = head::unreadable(&parts.status, &parts.headers) {
            let scanned = if mask.masks_body() {
                "masked"
            } else {
                "scanned for the backend's credential"
            };
            let reason = format!("the response {why}: it cannot be {scanned}, so it is withheld");
            warn!(request = %decided.id, %reason, "response withheld");
            return self
                .failed(decided, StatusCode::BAD_GATEWAY, &reason, started)
                .await;
        }
        let mut headers = HeaderMap::new();
        head::copy_end_to_end(&parts.headers, &mut headers);
        scrub::scrub_headers(&mut headers, secrets);
        head::mask_headers(&mut headers, mask, &self.ctx.mask_salt);
        parts.headers = headers;
        // Nothing else of the backend's head is relayed: hyper would write a reason phrase it
        // kept (which can carry anything, the credential too) back to the skill.
        parts.extensions = hyper::http::Extensions::new();
        if !mask.masks_body() {
            let body = Relay::new(body, Arc::clone(&self.to_skill), secrets.to_vec())
                .holding(lease)
                .boxed();
            let response = Response::from_parts(parts, body);
            return self
                .answered(decided, response, started, 0, None, None)
                .await;
        }
        match self.mask(body, mask, secrets).await {
            Ok((masked, count)) => {
                lease.release();
                let content = mask
                    .keep
                    .then(|| record::kept(&String::from_utf8_lossy(&masked)));
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.remove(header::TRANSFER_ENCODING);
                if self.s3.is_some() {
                    s3::drop_checksums(&mut parts.headers);
                }
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(masked.len()));
                self.to_skill
                    .fetch_add(masked.len() as u64, Ordering::Relaxed);
                let body = Full::new(Bytes::from(masked))
                    .map_err(|never| match never {})
                    .boxed();
                let response = Response::from_parts(parts, body);
                self.answered(decided, response, started, count, None, content)
                    .await
            }
            Err(reason) => {
                warn!(request = %decided.id, %reason, "response withheld: it cannot be masked");
                let reason = format!("the response cannot be masked, so it is withheld: {reason}");
                self.failed(decided, StatusCode::BAD_GATEWAY, &reason, started)
                    .await
            }
        }
    }

    /// Reads a whole response within the bound and masks it.
    pub(super) async fn mask(
        &self,
        body: Incoming,
        mask: &Mask,
        secrets: &[Vec<u8>],
    ) -> Result<(Vec<u8>, usize), String> {
        let limit = self.ctx.mask_body_limit;
        let body = read_whole(body, limit)
            .await
            .map_err(|unread| match unread {
                Unread::TooLarge => format!("it is larger than mask_body_limit ({limit} bytes)"),
                Unread::Failed(err) => format!("the backend failed while sending it ({err})"),
            })?;
        if body.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let (mut masked, count) =
            skillgate_policy::mask::mask_json(&body, mask, &self.ctx.mask_salt)
                .map_err(|err| err.to_string())?;
        scrub::scrub(&mut masked, secrets);
        Ok((masked, count))
    }

    /// Sends `request` on a pooled upstream connection, or a new one: a backend that cannot
    /// be reached or fails gives 502, one that does not answer within
    /// `upstream_response_timeout_ms` 504. A pooled connection the backend closed before the
    /// request was written is replaced once.
    pub(super) async fn send(
        &self,
        mut request: Request<Relay<ProxyBody>>,
    ) -> Result<(Response<Incoming>, Lease), (StatusCode, String)> {
        let unreachable = |reason| (StatusCode::BAD_GATEWAY, reason);
        let pool = &self.ctx.pool;
        let timeout = self.ctx.response_timeout;
        loop {
            let (mut sender, pooled) = match pool.take(&self.pool_key) {
                Some(sender) => (sender, true),
                None => (self.connect().await.map_err(unreachable)?, false),
            };
            match tokio::time::timeout(timeout, sender.try_send_request(request)).await {
                Ok(Ok(response)) => {
                    let lease = Lease::new(sender, self.pool_key.clone(), Arc::clone(pool));
                    return Ok((response, lease));
                }
                Ok(Err(mut err)) => match err.take_message() {
                    Some(unsent) if pooled => {
                        debug!(error = %err.error(), "a pooled backend connection had closed; using another");
                        request = unsent;
                    }
                    _ => {
                        return Err(unreachable(format!(
                            "the backend failed: {}",
                            err.into_error()
                        )));
                    }
                },
                Err(_) => {
                    return Err((
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "the backend did not answer within {} ms",
                            timeout.as_millis()
                        ),
                    ));
                }
            }
        }
    }

    pub(super) async fn connect(&self) -> Result<pool::Sender, String> {
        connect_to(&self.ctx, self.upstream, self.tls.as_ref()).await
    }

    /// Records the answer (without waiting: the decision was recorded before it took effect).
    pub(super) async fn answered(
        &self,
        decided: &Decided,
        response: Response<ProxyBody>,
        started: Instant,
        masked: usize,
        failure: Option<&str>,
        content: Option<String>,
    ) -> Response<ProxyBody> {
        // An MCP exchange's calls are counted one by one as their answers come.
        if self.mcp.is_none() {
            self.audit.gate().ops.answered(
                &self.audit.skill,
                &self.audit.backend,
                self.kind().as_str(),
                started.elapsed(),
                masked,
            );
        }
        let bytes = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let reason = match (failure, bytes) {
            (Some(failure), _) => failure.to_owned(),
            (None, Some(bytes)) => format!("{bytes} bytes, {masked} values masked"),
            (None, None) => format!("streamed, {masked} values masked"),
        };
        let status = response.status().as_u16().to_string();
        let facts = Facts {
            decision_id: Some(decided.id.clone()),
            status: Some(status.clone()),
            bytes,
            masked: Some(masked as i64),
            duration_us: Some(started.elapsed().as_micros() as i64),
            content,
            ..Facts::default()
        };
        self.audit
            .answered(Kind::Response, decided.line.clone(), status, reason, facts);
        response
    }

    /// Answers with an error of the agent's own (the backend failed, or its answer cannot be
    /// passed on), recorded with the reason.
    pub(super) async fn failed(
        &self,
        decided: &Decided,
        status: StatusCode,
        reason: &str,
        started: Instant,
    ) -> Response<ProxyBody> {
        let response = self.error_response(status, &decided.id, reason);
        self.answered(decided, response, started, 0, Some(reason), None)
            .await
    }
}

/// A new upstream connection to `upstream` (TLS when the backend has it).
pub(super) async fn connect_to(
    ctx: &HttpContext,
    upstream: SocketAddr,
    tls: Option<&crate::tls::Upstream>,
) -> Result<pool::Sender, String> {
    let stream = crate::gate::connect_upstream(upstream, ctx.connect_timeout)
        .await
        .map_err(|err| err.to_string())?;
    let _ = stream.set_nodelay(true);
    let upstream_local = stream
        .local_addr()
        .map_or_else(|_| "-".to_owned(), |a| a.to_string());
    let sender = match tls {
        None => handshake(stream).await?,
        Some(tls) => {
            let stream = ctx
                .tls
                .connect(stream, tls)
                .await
                .map_err(|err| format!("{err:#}"))?;
            handshake(stream).await?
        }
    };
    info!(%upstream, %upstream_local, tls = tls.is_some(), "upstream connected");
    Ok(sender)
}

/// Speaks HTTP/1.1 over `io`; the connection is driven by its own task.
pub(super) async fn handshake<T>(io: T) -> Result<pool::Sender, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|err| format!("cannot speak HTTP to the backend: {err}"))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            info!(error = %err, "backend connection ended with an error");
        }
    });
    Ok(sender)
}
