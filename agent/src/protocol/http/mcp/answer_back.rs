//! The agent's answers to the server's requests it refuses (a sampling or elicitation no rule
//! names): a JSON-RPC error POSTed to the server on the same MCP session, with the backend's
//! credential, on a connection of its own, so the server's tool fails at once instead of
//! waiting for an answer that will never come.

use serde_json::Value;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::*;

/// Where a refused server request's error goes.
pub(in crate::protocol::http) type Answers = UnboundedSender<Value>;

impl HttpConn {
    /// Starts the task that POSTs the errors sent on the returned channel to the server, as
    /// the MCP session `session` (it ends when the channel is dropped).
    pub(super) fn answer_back(&self, session: &str) -> Answers {
        let (tx, rx) = unbounded_channel();
        let mut headers = HeaderMap::new();
        let host = match &self.tls {
            Some(tls) => tls.server_name.clone(),
            None => self.host.clone(),
        };
        if let Ok(host) = HeaderValue::from_str(&host) {
            headers.insert(header::HOST, host);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        if let Ok(session) = HeaderValue::from_str(session) {
            headers.insert("mcp-session-id", session);
        }
        let policy = self.audit.gate().policy();
        let credentials = self.audit.gate().credentials();
        let credential = policy
            .backend(&self.audit.backend)
            .and_then(|b| b.credentials.as_deref())
            .and_then(|name| credentials.get(name))
            .and_then(|c| c.header.clone());
        if let Some((name, value)) = credential {
            headers.insert(name, value);
        }
        let task = Sending {
            ctx: Arc::clone(&self.ctx),
            upstream: self.upstream,
            tls: self.tls.clone(),
            path: self
                .mcp
                .as_ref()
                .map_or("/mcp", |m| m.path.as_str())
                .to_owned(),
            headers,
        };
        tokio::spawn(task.run(rx));
        tx
    }
}

struct Sending {
    ctx: Arc<HttpContext>,
    upstream: SocketAddr,
    tls: Option<crate::tls::Upstream>,
    path: String,
    headers: HeaderMap,
}

impl Sending {
    async fn run(self, mut rx: UnboundedReceiver<Value>) {
        while let Some(error) = rx.recv().await {
            if let Err(why) = self.send(&error).await {
                warn!(upstream = %self.upstream, reason = %why, "cannot answer the MCP server's request");
            }
        }
    }

    async fn send(&self, error: &Value) -> Result<(), String> {
        let mut sender = forward::connect_to(&self.ctx, self.upstream, self.tls.as_ref()).await?;
        let body = Full::new(Bytes::from(error.to_string()))
            .map_err(|never| match never {})
            .boxed();
        let mut request = Request::builder()
            .method(hyper::Method::POST)
            .uri(&self.path)
            .version(hyper::Version::HTTP_11);
        *request.headers_mut().expect("a fresh builder has headers") = self.headers.clone();
        let request = request
            .body(Relay::new(body, Arc::default(), Vec::new()))
            .map_err(|err| err.to_string())?;
        let response =
            tokio::time::timeout(self.ctx.response_timeout, sender.send_request(request))
                .await
                .map_err(|_| "the server did not answer in time".to_owned())?
                .map_err(|err| err.to_string())?;
        debug!(
            status = response.status().as_u16(),
            "the MCP server took the agent's answer"
        );
        Ok(())
    }
}
