//! The agent's own small HTTP(S) client: fetching JWKS and posting approval webhooks.
//! https verifies the server against the system roots (rustls).

use anyhow::{Context as _, Result, bail};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, StatusCode, Uri};

use crate::tls::Connectors;

/// Sends one request to `uri` (http or https); returns the status and up to `limit` bytes of
/// body.
pub async fn request(
    tls: &Connectors,
    method: Method,
    uri: &Uri,
    body: Option<(&'static str, Vec<u8>)>,
    limit: usize,
) -> Result<(StatusCode, Vec<u8>)> {
    let host = uri.host().context("the URL has no host")?.to_owned();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => bail!("only http:// and https:// URLs are supported"),
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, format!("{host}:{port}"));
    let payload = match body {
        Some((content_type, bytes)) => {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
            Bytes::from(bytes)
        }
        None => Bytes::new(),
    };
    let request = builder.body(Full::new(payload))?;
    if https {
        let to = crate::tls::Upstream {
            server_name: host.clone(),
            ca_file: None,
            client_cert: None,
        };
        let stream = tls.connect(tcp, &to).await?;
        send(stream, request, limit).await
    } else {
        send(tcp, request, limit).await
    }
}

async fn send<T>(
    io: T,
    request: hyper::Request<Full<Bytes>>,
    limit: usize,
) -> Result<(StatusCode, Vec<u8>)>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the response: {e}"))?;
    Ok((status, body.to_bytes().to_vec()))
}
