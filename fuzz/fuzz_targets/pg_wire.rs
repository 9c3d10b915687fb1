//! The agent's PostgreSQL wire decoding (`protocol::pg::wire` of the agent library): startup packets,
//! message framing and the messages the proxy reads (Query, RowDescription, DataRow,
//! ErrorResponse). Any bytes are decoded or refused, never a panic or an overread.
#![no_main]

use skillgate::protocol::pg::wire;

use std::sync::OnceLock;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    // With and without TLS on offer.
    for offer_tls in [false, true] {
        let mut stream = tokio::io::join(data, tokio::io::sink());
        let _ = runtime().block_on(wire::read_startup(&mut stream, offer_tls));
    }

    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = wire::frame(&mut buf, wire::MAX_FRONTEND_MESSAGE) {
        let body = wire::body(&frame);
        let _ = wire::query_text(body);
        let _ = wire::error_message(body);
        if let Some(columns) = wire::row_description(body) {
            let _ = format!("{columns:?}");
        }
        if let Some(values) = wire::data_row(body) {
            let _ = values.len();
        }
    }
});
