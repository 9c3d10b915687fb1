//! The two loops of a session once logged in: skill → backend (every statement decided before
//! it is forwarded, malformed messages ending the session) and backend → skill (every reply
//! matched to what it answers, rows masked), and what they leave to record.

use super::*;

impl PgConn {
    /// Skill → backend: every statement decided before it is forwarded.
    pub(super) async fn frontend<R, S, W>(
        &self,
        mut client: R,
        mut server: S,
        writer: &ClientWriter<W>,
        session: &Mutex<Session>,
    ) -> End
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
                        return End::Terminated;
                    }
                    Err(reason) => return self.violation(writer, &reason).await,
                }
            }
            if !out.is_empty() {
                if server.write_all(&out).await.is_err() {
                    return End::Error;
                }
                self.to_backend
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
                out.clear();
            }
            match wire::fill(&mut client, &mut inbox).await {
                Ok(true) => {}
                Ok(false) if inbox.is_empty() => return End::Closed,
                Ok(false) => {
                    return self
                        .violation(writer, "the connection ended inside a message")
                        .await;
                }
                Err(_) => return End::Error,
            }
        }
    }

    /// Ends the session on a protocol violation, nothing of it forwarded.
    pub(super) async fn violation<W: AsyncWrite + Unpin>(
        &self,
        writer: &ClientWriter<W>,
        reason: &str,
    ) -> End {
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
        End::ProtocolViolation
    }

    /// Backend → skill: denied statements' errors rewritten, masked rows masked.
    pub(super) async fn backend_loop<R, W>(
        &self,
        mut server: R,
        writer: &ClientWriter<W>,
        session: &Mutex<Session>,
        catalog: &Catalog,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut inbox = BytesMut::with_capacity(64 * 1024);
        let mut out = BytesMut::new();
        let salt = &self.ctx.mask_salt;
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
                    End::MaskingFailed
                } else {
                    End::Error
                };
            }
            if !out.is_empty() {
                if writer.lock().await.write_all(&out).await.is_err() {
                    return End::Error;
                }
                self.to_skill.fetch_add(out.len() as u64, Ordering::Relaxed);
                out.clear();
            }
            match wire::fill(&mut server, &mut inbox).await {
                Ok(true) => {}
                Ok(false) => return End::BackendClosed,
                Err(_) => return End::Error,
            }
        }
    }

    /// Records (and counts) how a statement ended.
    pub(super) fn noted(&self, noted: Noted) {
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
                let message = match self.ctx.sql_literals {
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
                let audit = &self.audit;
                audit.gate().ops.answered(
                    &audit.skill,
                    &audit.backend,
                    Kind::Sql.as_str(),
                    took,
                    masked,
                );
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

    /// Records how a statement ended (not waited for: its decision is already recorded).
    pub(super) fn result(&self, operation: &str, decision: &str, reason: String, facts: Facts) {
        self.audit.answered(
            Kind::Result,
            operation.to_owned(),
            decision.to_owned(),
            reason,
            facts,
        );
    }
}

/// The row count at the end of a command tag (`SELECT 10`, `INSERT 0 3`, `COPY 5`), if any.
pub(super) fn tag_rows(tag: &str) -> Option<i64> {
    let (command, count) = tag.rsplit_once(' ')?;
    if command.is_empty() {
        return None;
    }
    count.parse().ok()
}
