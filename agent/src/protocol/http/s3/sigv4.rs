//! AWS Signature Version 4, header authentication: the agent's own signature on every
//! request it sends to an `s3` backend. Hand-rolled on `hmac` and `sha2` (the SDK's
//! `aws-sigv4` crate brings the smithy runtime with it); checked against AWS's published
//! examples below and, end to end, by a real S3 server that verifies every signature.

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

/// An access key, as loaded from the agent's credentials (`kind = "aws"`).
pub struct AwsKey {
    pub access_key_id: String,
    pub secret: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKey")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What is signed: the request as it goes upstream.
pub struct Signed<'a> {
    pub method: &'a str,
    /// The path, already in canonical (RFC 3986, each byte once) encoding.
    pub path: &'a str,
    /// The query, already canonical: `name=value` pairs encoded and sorted, joined by `&`.
    pub query: &'a str,
    /// The headers to sign: lower-case names, sorted, each once (values joined by `,`).
    pub headers: &'a [(String, String)],
    /// `x-amz-content-sha256`: the payload's hex SHA-256 or `UNSIGNED-PAYLOAD`.
    pub payload: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// A request's signature: its `Authorization` header, and the chain its chunks' signatures
/// continue (STREAMING-AWS4-HMAC-SHA256-PAYLOAD).
pub struct Authorization {
    pub header: String,
    pub chain: ChunkChain,
}

/// What signs the chunks of a chunk-signed upload: each chunk's signature covers its data
/// and the signature before it, the first the request's (the seed).
pub struct ChunkChain {
    signing_key: Vec<u8>,
    amz_date: String,
    scope: String,
    previous: String,
}

impl ChunkChain {
    /// The signature of the next chunk, whose data hashes to `data_sha256`.
    pub fn next(&mut self, data_sha256: &[u8]) -> String {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256}\n{}",
            self.amz_date,
            self.scope,
            self.previous,
            hex(data_sha256)
        );
        self.previous = hex(&hmac(&self.signing_key, to_sign.as_bytes()));
        self.previous.clone()
    }
}

/// The SHA-256 of nothing.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Signs `request` with `key`.
pub fn authorization(key: &AwsKey, request: &Signed<'_>) -> Authorization {
    let canonical_headers: String = request
        .headers
        .iter()
        .map(|(name, value)| format!("{name}:{}\n", trim_value(value)))
        .collect();
    let signed_headers = request
        .headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method, request.path, request.query, request.payload
    );
    let date = &request.amz_date[..8];
    let scope = format!("{date}/{}/{}/aws4_request", request.region, request.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        request.amz_date,
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut signing = hmac(format!("AWS4{}", key.secret).as_bytes(), date.as_bytes());
    for part in [request.region, request.service, "aws4_request"] {
        signing = hmac(&signing, part.as_bytes());
    }
    let signature = hex(&hmac(&signing, to_sign.as_bytes()));
    let header = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
         Signature={signature}",
        key.access_key_id
    );
    Authorization {
        header,
        chain: ChunkChain {
            signing_key: signing,
            amz_date: request.amz_date.to_owned(),
            scope,
            previous: signature,
        },
    }
}

/// A header value as SigV4 signs it: trimmed, inner runs of spaces made one.
fn trim_value(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDDTHHMMSSZ` for `now`.
pub fn amz_date(now: time::OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = EMPTY_SHA256;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// `get-vanilla` from AWS's SigV4 test suite.
    #[test]
    fn sigv4_test_suite_get_vanilla() {
        let key = AwsKey {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned(),
            session_token: None,
        };
        let headers = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ]);
        let got = authorization(
            &key,
            &Signed {
                method: "GET",
                path: "/",
                query: "",
                headers: &headers,
                payload: EMPTY,
                amz_date: "20150830T123600Z",
                region: "us-east-1",
                service: "service",
            },
        );
        assert_eq!(
            got.header,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    fn s3_example(
        method: &str,
        path: &str,
        query: &str,
        pairs: &[(&str, &str)],
        payload: &str,
    ) -> Authorization {
        let key = AwsKey {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".to_owned(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
            session_token: None,
        };
        let headers = headers(pairs);
        authorization(
            &key,
            &Signed {
                method,
                path,
                query,
                headers: &headers,
                payload,
                amz_date: "20130524T000000Z",
                region: "us-east-1",
                service: "s3",
            },
        )
    }

    fn signature(authorization: &Authorization) -> &str {
        authorization.header.rsplit_once("Signature=").unwrap().1
    }

    /// The examples of the S3 API reference ("Signature Calculations for the Authorization
    /// Header: Transferring Payload in a Single Chunk").
    #[test]
    fn s3_reference_examples() {
        // GET Object, with a Range.
        assert_eq!(
            signature(&s3_example(
                "GET",
                "/test.txt",
                "",
                &[
                    ("host", "examplebucket.s3.amazonaws.com"),
                    ("range", "bytes=0-9"),
                    ("x-amz-content-sha256", EMPTY),
                    ("x-amz-date", "20130524T000000Z"),
                ],
                EMPTY
            )),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        // PUT Object, a signed payload and a key with `$`.
        let payload = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072";
        assert_eq!(hex(&Sha256::digest(b"Welcome to Amazon S3.")), payload);
        assert_eq!(
            signature(&s3_example(
                "PUT",
                "/test%24file.text",
                "",
                &[
                    ("date", "Fri, 24 May 2013 00:00:00 GMT"),
                    ("host", "examplebucket.s3.amazonaws.com"),
                    ("x-amz-content-sha256", payload),
                    ("x-amz-date", "20130524T000000Z"),
                    ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                ],
                payload
            )),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
        // GET Bucket lifecycle: a subresource with no value.
        assert_eq!(
            signature(&s3_example(
                "GET",
                "/",
                "lifecycle=",
                &[
                    ("host", "examplebucket.s3.amazonaws.com"),
                    ("x-amz-content-sha256", EMPTY),
                    ("x-amz-date", "20130524T000000Z"),
                ],
                EMPTY
            )),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
        // GET Bucket (list objects), parameters sorted.
        assert_eq!(
            signature(&s3_example(
                "GET",
                "/",
                "max-keys=2&prefix=J",
                &[
                    ("host", "examplebucket.s3.amazonaws.com"),
                    ("x-amz-content-sha256", EMPTY),
                    ("x-amz-date", "20130524T000000Z"),
                ],
                EMPTY
            )),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    /// The S3 API reference's chunk-signed upload example ("Signature Calculations for the
    /// Authorization Header: Transferring Payload in Multiple Chunks"): 64 KiB and 1 KiB of
    /// `a`, then the empty chunk.
    #[test]
    fn s3_reference_chunked_upload() {
        let mut authorization = s3_example(
            "PUT",
            "/examplebucket/chunkObject.txt",
            "",
            &[
                ("content-encoding", "aws-chunked"),
                ("content-length", "66824"),
                ("host", "s3.amazonaws.com"),
                ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
                ("x-amz-date", "20130524T000000Z"),
                ("x-amz-decoded-content-length", "66560"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ],
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        );
        assert_eq!(
            signature(&authorization),
            "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
        );
        let chain = &mut authorization.chain;
        assert_eq!(
            chain.next(&Sha256::digest(vec![b'a'; 65536])),
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        assert_eq!(
            chain.next(&Sha256::digest(vec![b'a'; 1024])),
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        );
        assert_eq!(
            chain.next(&Sha256::digest(b"")),
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );
    }

    #[test]
    fn dates_and_values_are_signed_as_aws_reads_them() {
        let at = time::OffsetDateTime::from_unix_timestamp(1_440_938_160).unwrap();
        assert_eq!(amz_date(at), "20150830T123600Z");
        assert_eq!(trim_value("  a   b c "), "a b c");
    }
}
