//! S3 requests, path-style, classified into S3's own operation names, each with the bucket,
//! key or listed prefix it touches, the way the server will read them: the key is the path
//! after the bucket, percent-decoded once and otherwise literal (S3 keys are opaque strings:
//! `a/../b` is a key of its own, not `b`).
//!
//! Anything the classifier cannot read exactly as S3 will is refused with the reason
//! ([`BadS3`]); a request it reads but does not know (ACLs, bucket policies, ...) is the
//! operation `unknown`, which only a rule naming `unknown` grants.

use std::fmt;

mod delete;
mod parameters;
mod pattern;
#[cfg(test)]
mod tests;

pub use delete::delete_keys;
use parameters::{SUBRESOURCES, parameters};
pub use pattern::ObjectGlob;

/// The operations the classifier knows, by their S3 names.
pub const OPERATIONS: &[&str] = &[
    "ListBuckets",
    "ListObjects",
    "ListObjectsV2",
    "HeadBucket",
    "GetBucketLocation",
    "GetObject",
    "HeadObject",
    "PutObject",
    "CopyObject",
    "DeleteObject",
    "DeleteObjects",
    "CreateMultipartUpload",
    "UploadPart",
    "UploadPartCopy",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "ListParts",
    "ListMultipartUploads",
    "GetObjectTagging",
    "PutObjectTagging",
];

/// The name of every operation the classifier does not know.
pub const UNKNOWN: &str = "unknown";

/// The most keys one DeleteObjects request may name (S3's own limit).
pub const MAX_DELETE_KEYS: usize = 1000;

/// What an access touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// The account: no bucket (ListBuckets).
    Service,
    /// A bucket itself, none of its objects.
    Bucket(String),
    /// One object.
    Object { bucket: String, key: String },
    /// Every key that starts with `prefix` (a listing).
    Prefix { bucket: String, prefix: String },
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service => f.write_str("the account"),
            Self::Bucket(bucket) => write!(f, "bucket `{bucket}`"),
            Self::Object { bucket, key } => write!(f, "`{bucket}/{key}`"),
            Self::Prefix { bucket, prefix } => write!(f, "keys under `{bucket}/{prefix}`"),
        }
    }
}

/// One operation on one resource; a request is one or more of them (a copy reads its source,
/// a DeleteObjects deletes each key it names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// One of [`OPERATIONS`], or [`UNKNOWN`].
    pub operation: &'static str,
    pub resource: Resource,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.operation, self.resource)
    }
}

/// A classified S3 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Request {
    /// The request's operation (one of [`OPERATIONS`], or [`UNKNOWN`]).
    pub operation: &'static str,
    /// What it touches. For a DeleteObjects, empty until its body's keys are added
    /// ([`S3Request::add_delete_keys`]): decided without them, it is denied.
    pub accesses: Vec<Access>,
    /// The bucket and key (empty: none) as S3 reads them, for the upstream path.
    pub bucket: String,
    pub key: String,
    /// The query parameters, decoded, in the order sent.
    pub query: Vec<(String, String)>,
    /// A read of part of an object (a `Range` or `If-Range` header, or `partNumber`): no
    /// mask can apply to it.
    pub partial: Option<String>,
}

impl S3Request {
    /// Whether the decision needs the body: DeleteObjects names its keys there.
    pub fn needs_body(&self) -> bool {
        self.operation == "DeleteObjects"
    }

    /// The path and query the server gets, rebuilt from the classification in SigV4's
    /// canonical encoding (so it is also what is signed): `/bucket/key?name=value&...`,
    /// sorted. Classified again, it reads as this request does.
    pub fn upstream_target(&self) -> String {
        let mut target = String::from("/");
        if !self.bucket.is_empty() {
            target.push_str(&encode(&self.bucket, false));
            if !self.key.is_empty() {
                target.push('/');
                target.push_str(&encode(&self.key, true));
            }
        }
        let mut pairs: Vec<(String, String)> = self
            .query
            .iter()
            .map(|(name, value)| (encode(name, false), encode(value, false)))
            .collect();
        pairs.sort();
        for (i, (name, value)) in pairs.iter().enumerate() {
            target.push(if i == 0 { '?' } else { '&' });
            target.push_str(name);
            target.push('=');
            target.push_str(value);
        }
        target
    }

    /// Adds the keys a DeleteObjects body names, each a DeleteObjects access on its object.
    pub fn add_delete_keys(&mut self, body: &[u8]) -> Result<(), BadS3> {
        for key in delete_keys(body)? {
            self.accesses.push(Access {
                operation: "DeleteObjects",
                resource: Resource::Object {
                    bucket: self.bucket.clone(),
                    key,
                },
            });
        }
        Ok(())
    }
}

/// Why a request is refused before the policy decides it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadS3 {
    #[error("{0}")]
    Target(String),
    #[error(
        "presigned URLs (query-string authentication) are refused: sign with headers (any SDK \
         does by default); the agent signs upstream with its own key"
    )]
    Presigned,
    #[error("`{0}` is sent twice: S3 would read one of them, the policy cannot tell which")]
    Repeated(String),
    #[error("x-amz-copy-source: {0}")]
    CopySource(String),
    #[error("DeleteObjects body: {0}")]
    DeleteBody(String),
}

/// Classifies a path-style request: `method`, the request target as sent (`/bucket/key?query`)
/// and the headers (lower-case names).
pub fn classify(
    method: &str,
    target: &str,
    headers: &[(String, String)],
) -> Result<S3Request, BadS3> {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let Some(path) = path.strip_prefix('/') else {
        return Err(BadS3::Target(format!(
            "the target `{target}` is not a path (path-style addressing: `/bucket/key`)"
        )));
    };
    let (bucket, key) = match path.split_once('/') {
        Some((bucket, key)) => (decode(bucket, "bucket")?, decode(key, "key")?),
        None => (decode(path, "bucket")?, String::new()),
    };
    if !bucket.is_empty() && !is_bucket_name(&bucket) {
        return Err(BadS3::Target(format!(
            "`{bucket}` is not a bucket name (letters, digits, `.`, `-`, `_`, at most 63)"
        )));
    }
    if bucket.is_empty() && !key.is_empty() {
        return Err(BadS3::Target(
            "the path has a key but no bucket (`//key`)".to_owned(),
        ));
    }
    let query = parse_query(query.unwrap_or(""))?;
    let has = |name: &str| query.iter().any(|(n, _)| n == name);
    let copy_source = single_header(headers, "x-amz-copy-source")?;
    let level = match (bucket.is_empty(), key.is_empty()) {
        (true, _) => Level::Service,
        (false, true) => Level::Bucket,
        (false, false) => Level::Object,
    };
    let operation = match (method, level) {
        ("GET", Level::Service) => "ListBuckets",
        ("HEAD", Level::Bucket) => "HeadBucket",
        ("GET", Level::Bucket) if has("location") => "GetBucketLocation",
        ("GET", Level::Bucket) if has("uploads") => "ListMultipartUploads",
        ("GET", Level::Bucket) if has("list-type") => {
            match query.iter().find(|(n, _)| n == "list-type") {
                Some((_, version)) if version == "2" => "ListObjectsV2",
                _ => UNKNOWN,
            }
        }
        ("GET", Level::Bucket) => "ListObjects",
        ("POST", Level::Bucket) if has("delete") => "DeleteObjects",
        ("GET", Level::Object) if has("tagging") => "GetObjectTagging",
        ("PUT", Level::Object) if has("tagging") => "PutObjectTagging",
        ("GET", Level::Object) if has("uploadId") => "ListParts",
        ("GET", Level::Object) => "GetObject",
        ("HEAD", Level::Object) => "HeadObject",
        ("PUT", Level::Object) if has("uploadId") && copy_source.is_some() => "UploadPartCopy",
        ("PUT", Level::Object) if has("uploadId") => "UploadPart",
        ("PUT", Level::Object) if copy_source.is_some() => "CopyObject",
        ("PUT", Level::Object) => "PutObject",
        ("POST", Level::Object) if has("uploads") => "CreateMultipartUpload",
        ("POST", Level::Object) if has("uploadId") => "CompleteMultipartUpload",
        ("DELETE", Level::Object) if has("uploadId") => "AbortMultipartUpload",
        ("DELETE", Level::Object) => "DeleteObject",
        _ => UNKNOWN,
    };
    // Two subresources: S3 acts on one of them, the policy cannot tell which.
    let subresources: Vec<&str> = query
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| SUBRESOURCES.contains(name))
        .collect();
    if let [first, second, ..] = subresources.as_slice()
        && !(*first == "uploadId" && *second == "partNumber")
        && !(*first == "partNumber" && *second == "uploadId")
    {
        return Err(BadS3::Target(format!(
            "`{first}` and `{second}` name two operations: S3 performs one of them, the \
             agent cannot tell which"
        )));
    }
    // A subresource the operation does not take (`acl`, `policy`, `retention`, ...) makes
    // it another operation: unknown. A parameter that is neither is refused: S3 would
    // ignore it and perform the operation the policy would not have seen.
    let allowed = parameters(operation);
    let mut unknown = operation == UNKNOWN;
    for (name, _) in query.iter().filter(|_| operation != UNKNOWN) {
        if name == "x-id" || allowed.contains(&name.as_str()) {
            continue;
        }
        if !SUBRESOURCES.contains(&name.as_str()) {
            return Err(BadS3::Target(format!(
                "query parameter `{name}` is not one {operation} takes: refused, since S3 \
                 may ignore it"
            )));
        }
        unknown = true;
    }
    let operation = if unknown { UNKNOWN } else { operation };
    if copy_source.is_some() && !matches!(operation, "CopyObject" | "UploadPartCopy" | UNKNOWN) {
        return Err(BadS3::CopySource(format!(
            "it is only for CopyObject and UploadPartCopy, not {operation}"
        )));
    }
    let prefix = || {
        query
            .iter()
            .find(|(n, _)| n == "prefix")
            .map_or_else(String::new, |(_, v)| v.clone())
    };
    let resource = match (operation, level) {
        ("ListObjects" | "ListObjectsV2" | "ListMultipartUploads", _) => Resource::Prefix {
            bucket: bucket.clone(),
            prefix: prefix(),
        },
        (_, Level::Service) => Resource::Service,
        (_, Level::Bucket) => Resource::Bucket(bucket.clone()),
        (_, Level::Object) => Resource::Object {
            bucket: bucket.clone(),
            key: key.clone(),
        },
    };
    let mut accesses = vec![Access {
        operation,
        resource,
    }];
    // A copy source is a read, whatever the operation (S3 may copy for one the classifier
    // does not know).
    if let Some(source) = copy_source {
        let (bucket, key) = copy_source_object(source)?;
        accesses.push(Access {
            operation: "GetObject",
            resource: Resource::Object { bucket, key },
        });
    }
    // Headers that make a request do more than its operation: an ACL or object lock set
    // with a write is an operation of its own (`unknown`), tags set with one a
    // PutObjectTagging, each on the same resource.
    let more: Vec<&'static str> = headers
        .iter()
        .filter_map(|(name, _)| header_operation(name))
        .collect();
    if operation == "DeleteObjects" {
        if let Some((name, _)) = headers.iter().find(|(n, _)| header_operation(n).is_some()) {
            return Err(BadS3::Target(format!(
                "`{name}` is refused on DeleteObjects: its keys are decided one by one"
            )));
        }
        accesses.clear();
    } else {
        let resource = accesses[0].resource.clone();
        for operation in more {
            let access = Access {
                operation,
                resource: resource.clone(),
            };
            if !accesses.contains(&access) {
                accesses.push(access);
            }
        }
    }
    let partial = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .find(|name| *name == "range" || *name == "if-range")
        .or_else(|| has("partNumber").then_some("partNumber"))
        .map(str::to_owned);
    Ok(S3Request {
        operation,
        accesses,
        bucket,
        key,
        query,
        partial,
    })
}

#[derive(Clone, Copy)]
enum Level {
    Service,
    Bucket,
    Object,
}

/// The operation a header adds to any request (see [`classify`]).
fn header_operation(name: &str) -> Option<&'static str> {
    let acl = name == "x-amz-acl" || name.starts_with("x-amz-grant-");
    let lock =
        name.starts_with("x-amz-object-lock-") || name == "x-amz-bypass-governance-retention";
    if acl || lock {
        Some(UNKNOWN)
    } else if name == "x-amz-tagging" {
        Some("PutObjectTagging")
    } else {
        None
    }
}

/// The one value of `name` among `headers`: a repeated one is refused.
fn single_header<'h>(
    headers: &'h [(String, String)],
    name: &str,
) -> Result<Option<&'h str>, BadS3> {
    let mut values = headers.iter().filter(|(n, _)| n == name);
    let first = values.next().map(|(_, v)| v.as_str());
    if values.next().is_some() {
        return Err(BadS3::Repeated(name.to_owned()));
    }
    Ok(first)
}

/// `bucket/key` or `/bucket/key`, percent-encoded, with an optional `?versionId=...`.
fn copy_source_object(value: &str) -> Result<(String, String), BadS3> {
    let (source, version) = match value.split_once('?') {
        Some((source, version)) => (source, Some(version)),
        None => (value, None),
    };
    if let Some(version) = version
        && !version.starts_with("versionId=")
    {
        return Err(BadS3::CopySource(format!(
            "`?{version}`: only `?versionId=...` may follow the source object"
        )));
    }
    let source = source.strip_prefix('/').unwrap_or(source);
    let Some((bucket, key)) = source.split_once('/') else {
        return Err(BadS3::CopySource(format!(
            "`{value}` is not `bucket/key` (access point ARNs are refused)"
        )));
    };
    let bucket = decode(bucket, "copy source bucket")?;
    let key = decode(key, "copy source key")?;
    if !is_bucket_name(&bucket) || key.is_empty() {
        return Err(BadS3::CopySource(format!("`{value}` is not `bucket/key`")));
    }
    Ok((bucket, key))
}

/// Splits a query string into decoded pairs. A repeated name, or one signing the request
/// (a presigned URL), is refused.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, BadS3> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let name = decode(name, "query parameter name")?;
        let value = decode(value, "query parameter value")?;
        let signing = name.to_ascii_lowercase();
        if signing.starts_with("x-amz-") || signing == "signature" || signing == "awsaccesskeyid" {
            return Err(BadS3::Presigned);
        }
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(BadS3::Repeated(format!("query parameter {name}")));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// Percent-decodes `text` once, as S3 does, into UTF-8. A raw `+` is refused: servers differ
/// on whether it is a space, and SDKs send `%2B`.
fn decode(text: &str, what: &str) -> Result<String, BadS3> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        BadS3::Target(format!("the {what} `{text}` has a bad percent escape"))
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                return Err(BadS3::Target(format!(
                    "the {what} `{text}` has a raw `+` (a space to some servers, a plus to \
                     others): send `%2B` or `%20`"
                )));
            }
            byte if byte < 0x20 || byte == 0x7f || byte == b'#' => {
                return Err(BadS3::Target(format!(
                    "the {what} `{text}` has a control character or `#`"
                )));
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    if out.contains(&0) {
        return Err(BadS3::Target(format!(
            "the {what} `{text}` decodes to a NUL byte"
        )));
    }
    String::from_utf8(out)
        .map_err(|_| BadS3::Target(format!("the {what} `{text}` does not decode to UTF-8")))
}

/// Bucket names as S3 and its compatible servers take them (legacy names allow upper case
/// and `_`).
pub(crate) fn is_bucket_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && name != "."
        && name != ".."
}

/// Percent-encodes `text` as SigV4's canonical form does (RFC 3986 unreserved characters
/// kept), keeping `/` where `slash` says: the path and query the agent sends upstream.
pub fn encode(text: &str, slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char);
            }
            b'/' if slash => out.push('/'),
            byte => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
