//! The TLS a skill speaks, decided before anything goes upstream: the server name a `tls`
//! backend's ClientHello asks for, and HTTPS interception for `http` backends.

use tokio::net::TcpStream;
use tracing::{error, info};

use super::{Proxy, reset};
use crate::gate::Audit;
use crate::proxy::intercept::Handshake;
use crate::record::{self, Event, Facts, Kind};

impl Proxy {
    /// Reads the skill's TLS ClientHello and checks the server name it asks for against the
    /// backend's `tls.server_name` (when the backend names one); records the decision. Returns
    /// the bytes read (to replay upstream) when the connection may go on.
    pub(super) async fn sni_gate(
        &self,
        stream: &mut TcpStream,
        server_name: Option<&str>,
        audit: &Audit,
    ) -> Option<Vec<u8>> {
        let (hello, sni, allowed, reason) = match crate::tls::read_client_hello(stream).await {
            Ok((hello, sni)) => {
                let (allowed, reason) = match (server_name, sni.as_deref()) {
                    (Some(want), Some(got)) if want.eq_ignore_ascii_case(got) => {
                        (true, format!("SNI `{got}` is the backend's server name"))
                    }
                    (Some(want), Some(got)) => (
                        false,
                        format!("SNI `{got}` is not the backend's server name `{want}`"),
                    ),
                    (Some(want), None) => (
                        false,
                        format!("the ClientHello names no server (the backend is `{want}`)"),
                    ),
                    (None, _) => (
                        true,
                        "the backend names no server_name: SNI not checked".to_owned(),
                    ),
                };
                (hello, sni, allowed, reason)
            }
            Err(reason) => (Vec::new(), None, false, reason),
        };
        let recorded = self
            .tls_decided(audit, "sni", sni.as_deref(), allowed, reason)
            .await;
        (allowed && recorded).then_some(hello)
    }

    /// Logs and records a decision on a skill's TLS (`what`: `sni` for a `tls` backend's
    /// server name, `intercept` for HTTPS interception). `false`: it could not be recorded,
    /// so the connection must be refused.
    async fn tls_decided(
        &self,
        audit: &Audit,
        what: &str,
        sni: Option<&str>,
        allowed: bool,
        reason: String,
    ) -> bool {
        let verdict = if allowed { "allow" } else { "deny" };
        let sni = sni.unwrap_or("-");
        info!(sni, decision = verdict, reason = %reason, "TLS {what} decided");
        audit
            .record(Event {
                at_ns: record::now_ns(),
                kind: Kind::Tls,
                operation: format!("{what} {sni}"),
                decision: verdict.to_owned(),
                rule: None,
                reason,
                facts: Facts::default(),
            })
            .await
    }

    /// Ends the skill's TLS for an `intercept_tls` backend (a certificate for the server name
    /// it asks for, minted from the skills CA) and records the decision. `None`: refused.
    pub(super) async fn intercept(
        &self,
        stream: TcpStream,
        names: &[String],
        audit: &Audit,
    ) -> Option<Box<tokio_rustls::server::TlsStream<TcpStream>>> {
        let (decrypted, sni, reason) = match self.intercept.get() {
            Ok(interceptor) => match interceptor.accept(stream, names).await {
                Handshake::Done(decrypted, name) => {
                    let reason = format!("TLS intercepted for `{name}` (intercept_tls)");
                    (Some(decrypted), Some(name), reason)
                }
                Handshake::Refused(name, reason) => (None, name, reason),
            },
            Err(err) => {
                reset(stream);
                let why = format!("HTTPS interception is unavailable: the skills CA: {err:#}");
                error!(reason = %why, "cannot intercept");
                (None, None, why)
            }
        };
        let allowed = decrypted.is_some();
        let recorded = self
            .tls_decided(audit, "intercept", sni.as_deref(), allowed, reason)
            .await;
        decrypted.filter(|_| recorded)
    }
}
