//! The server name a connection's first bytes ask for, read without consuming them: the SNI
//! of a TLS ClientHello, or the Host of an HTTP request head. Only read when the names a skill
//! resolved to the address lead to several backends, to tell which one it dialed.

use std::time::Duration;

use tokio::net::TcpStream;

/// Most bytes looked at: a ClientHello or a request head larger than this names nothing.
const MAX_PEEK: usize = 16 * 1024;
/// How long the skill has to send them.
const PEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two looks at the socket while the first bytes are incomplete.
const PEEK_PAUSE: Duration = Duration::from_millis(5);

/// The server name in the connection's first bytes, if they hold one within the limits.
pub async fn peek(stream: &TcpStream) -> Option<String> {
    let mut buf = vec![0u8; MAX_PEEK];
    let read = async {
        let mut seen = 0;
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            match parse(&buf[..n]) {
                Parsed::Name(name) => return name,
                Parsed::Incomplete if n < MAX_PEEK => {}
                Parsed::Incomplete => return None,
            }
            if n == seen {
                tokio::time::sleep(PEEK_PAUSE).await;
            }
            seen = n;
        }
    };
    tokio::time::timeout(PEEK_TIMEOUT, read)
        .await
        .ok()
        .flatten()
}

enum Parsed {
    /// Complete: the name, if the bytes carry one.
    Name(Option<String>),
    Incomplete,
}

fn parse(bytes: &[u8]) -> Parsed {
    if bytes.first() == Some(&0x16) {
        let mut acceptor = rustls::server::Acceptor::default();
        let mut input = bytes;
        while !input.is_empty() {
            if acceptor.read_tls(&mut input).is_err() {
                return Parsed::Name(None);
            }
        }
        return match acceptor.accept() {
            Ok(Some(accepted)) => {
                Parsed::Name(accepted.client_hello().server_name().map(str::to_owned))
            }
            Ok(None) => Parsed::Incomplete,
            Err(_) => Parsed::Name(None),
        };
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {
            let hosts: Vec<&[u8]> = request
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| h.value)
                .collect();
            // One Host, as the backend will read it; two are no name at all.
            let [host] = hosts.as_slice() else {
                return Parsed::Name(None);
            };
            let host = std::str::from_utf8(host).ok().map(str::trim);
            Parsed::Name(host.map(|h| strip_port(h).to_owned()))
        }
        Ok(httparse::Status::Partial) => Parsed::Incomplete,
        Err(_) => Parsed::Name(None),
    }
}

/// `name:port` → `name` (a bracketed IPv6 literal stays as it is: it names no backend).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(bytes: &[u8]) -> Option<Option<String>> {
        match parse(bytes) {
            Parsed::Name(name) => Some(name),
            Parsed::Incomplete => None,
        }
    }

    #[test]
    fn an_http_head_names_its_host() {
        let head = b"GET / HTTP/1.1\r\nHost: Orders.internal:8080\r\n\r\n";
        assert_eq!(name(head), Some(Some("Orders.internal".to_owned())));
        assert_eq!(name(&head[..20]), None);
        let twice = b"GET / HTTP/1.1\r\nHost: a.internal\r\nHost: b.internal\r\n\r\n";
        assert_eq!(name(twice), Some(None));
        assert_eq!(name(b"\x00\x01garbage\r\n\r\n"), Some(None));
    }
}
