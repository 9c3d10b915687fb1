use super::*;

fn op(method: &str, target: &str) -> &'static str {
    classify(method, target, &[]).unwrap().operation
}

fn copy(method: &str, target: &str, source: &str) -> Result<S3Request, BadS3> {
    let headers = [("x-amz-copy-source".to_owned(), source.to_owned())];
    classify(method, target, &headers)
}

fn object(bucket: &str, key: &str) -> Resource {
    Resource::Object {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    }
}

fn prefix(bucket: &str, prefix: &str) -> Resource {
    Resource::Prefix {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
    }
}

#[test]
fn operations_by_method_path_and_query() {
    let cases = [
        ("GET", "/", "ListBuckets"),
        ("GET", "/b", "ListObjects"),
        ("GET", "/b/", "ListObjects"),
        (
            "GET",
            "/b?list-type=2&prefix=r%2F&encoding-type=url",
            "ListObjectsV2",
        ),
        ("GET", "/b?list-type=1", UNKNOWN),
        ("HEAD", "/b", "HeadBucket"),
        ("GET", "/b?location", "GetBucketLocation"),
        ("GET", "/b?uploads&prefix=r", "ListMultipartUploads"),
        ("POST", "/b?delete", "DeleteObjects"),
        ("GET", "/b/k", "GetObject"),
        ("GET", "/b/k?x-id=GetObject&versionId=3", "GetObject"),
        ("HEAD", "/b/k", "HeadObject"),
        ("PUT", "/b/k", "PutObject"),
        ("DELETE", "/b/k", "DeleteObject"),
        ("POST", "/b/k?uploads", "CreateMultipartUpload"),
        ("PUT", "/b/k?partNumber=1&uploadId=u", "UploadPart"),
        ("POST", "/b/k?uploadId=u", "CompleteMultipartUpload"),
        ("DELETE", "/b/k?uploadId=u", "AbortMultipartUpload"),
        ("GET", "/b/k?uploadId=u", "ListParts"),
        ("GET", "/b/k?tagging", "GetObjectTagging"),
        ("PUT", "/b/k?tagging", "PutObjectTagging"),
        // What the classifier does not know is unknown, subresources included.
        ("GET", "/b/k?acl", UNKNOWN),
        ("PUT", "/b/k?acl", UNKNOWN),
        ("GET", "/b?policy", UNKNOWN),
        ("PUT", "/b", UNKNOWN),
        ("DELETE", "/b", UNKNOWN),
        ("POST", "/b/k", UNKNOWN),
        ("GET", "/b/k?retention", UNKNOWN),
        ("DELETE", "/b/k?tagging", UNKNOWN),
        ("PATCH", "/b/k", UNKNOWN),
        ("GET", "/b/k?versionId=1&acl", UNKNOWN),
    ];
    for (method, target, expected) in cases {
        assert_eq!(op(method, target), expected, "{method} {target}");
    }
}

#[test]
fn parameters_s3_could_ignore_or_read_two_ways_are_refused() {
    for (method, target) in [
        // Not a parameter of GetObject, and no subresource: S3 would ignore it.
        ("GET", "/b/k?prefix=x"),
        ("POST", "/b?delete&dry-run=1"),
        // Two operations in one request.
        ("POST", "/b?delete&acl"),
        ("GET", "/b/k?tagging&acl"),
        ("PUT", "/b/k?uploadId=u&tagging"),
    ] {
        let refused = classify(method, target, &[]);
        assert!(
            matches!(refused, Err(BadS3::Target(_))),
            "{method} {target}: {refused:?}"
        );
    }
}

#[test]
fn headers_that_do_more_than_the_operation_are_decided_too() {
    let with = |pairs: &[(&str, &str)]| {
        let headers: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        classify("PUT", "/b/k", &headers)
            .map(|r| r.accesses.iter().map(|a| a.operation).collect::<Vec<_>>())
    };
    assert_eq!(with(&[]), Ok(vec!["PutObject"]));
    assert_eq!(
        with(&[("x-amz-acl", "public-read")]),
        Ok(vec!["PutObject", UNKNOWN])
    );
    assert_eq!(
        with(&[
            ("x-amz-grant-read", "uri=x"),
            ("x-amz-object-lock-mode", "GOVERNANCE")
        ]),
        Ok(vec!["PutObject", UNKNOWN])
    );
    assert_eq!(
        with(&[("x-amz-tagging", "a=b")]),
        Ok(vec!["PutObject", "PutObjectTagging"])
    );
    let bypass = [(
        "x-amz-bypass-governance-retention".to_owned(),
        "true".to_owned(),
    )];
    assert!(classify("POST", "/b?delete", &bypass).is_err());
    assert_eq!(
        classify("DELETE", "/b/k", &bypass).unwrap().accesses[1].operation,
        UNKNOWN
    );
}

#[test]
fn a_copy_source_is_read_whatever_the_operation() {
    let request = copy("PUT", "/b/k?acl", "src/secret").unwrap();
    assert_eq!(request.operation, UNKNOWN);
    assert_eq!(request.accesses[1].resource, object("src", "secret"));
}

#[test]
fn keys_are_decoded_once_and_otherwise_literal() {
    let request = classify("GET", "/b/r/..%2Fsecret/%2561", &[]).unwrap();
    assert_eq!(request.key, "r/../secret/%61");
    assert_eq!(request.accesses[0].resource, object("b", "r/../secret/%61"));
    let request = classify("GET", "/b//lead", &[]).unwrap();
    assert_eq!(request.key, "/lead");
    let request = classify("GET", "/b/caf%C3%A9%20x", &[]).unwrap();
    assert_eq!(request.key, "café x");
}

#[test]
fn ambiguous_targets_are_refused() {
    for target in [
        "/b/a+b",
        "/b/%zz",
        "/b/%4",
        "/b/%ff",
        "//k",
        "/b%2Fc/k",
        "b/k",
        "/b/k?prefix=a+b",
        "/b?prefix=a&prefix=b",
        "/b/%00",
        "/../k",
    ] {
        assert!(classify("GET", target, &[]).is_err(), "{target}");
    }
}

#[test]
fn presigned_urls_are_refused() {
    for target in [
        "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00",
        "/b/k?x-amz-credential=a",
        "/b/k?AWSAccessKeyId=a&Signature=b&Expires=1",
    ] {
        assert_eq!(
            classify("GET", target, &[]),
            Err(BadS3::Presigned),
            "{target}"
        );
    }
}

#[test]
fn lists_touch_their_prefix() {
    let request = classify("GET", "/b?list-type=2&prefix=reports%2F2026%2F", &[]).unwrap();
    assert_eq!(request.accesses[0].resource, prefix("b", "reports/2026/"));
    let request = classify("GET", "/b", &[]).unwrap();
    assert_eq!(request.accesses[0].resource, prefix("b", ""));
    assert_eq!(
        classify("GET", "/", &[]).unwrap().accesses[0].resource,
        Resource::Service
    );
    assert_eq!(
        classify("HEAD", "/b", &[]).unwrap().accesses[0].resource,
        Resource::Bucket("b".to_owned())
    );
}

#[test]
fn a_copy_also_reads_its_source() {
    let request = copy("PUT", "/b/dst", "/src/a%2Fb?versionId=7").unwrap();
    assert_eq!(request.operation, "CopyObject");
    assert_eq!(
        request.accesses,
        vec![
            Access {
                operation: "CopyObject",
                resource: object("b", "dst"),
            },
            Access {
                operation: "GetObject",
                resource: object("src", "a/b"),
            },
        ]
    );
    let part = copy("PUT", "/b/dst?partNumber=2&uploadId=u", "src/k").unwrap();
    assert_eq!(part.operation, "UploadPartCopy");
    assert_eq!(part.accesses[1].resource, object("src", "k"));
    // A source S3 would read differently, or one on an operation that takes none: refused.
    assert!(copy("PUT", "/b/dst", "src").is_err());
    assert!(copy("PUT", "/b/dst", "src/k?acl").is_err());
    assert!(copy("PUT", "/b/dst", "arn:aws:s3:x:accesspoint/a/object/k").is_err());
    assert!(copy("PUT", "/b/dst", "src/a+b").is_err());
    assert!(copy("GET", "/b/k", "src/k").is_err());
    let twice = [
        ("x-amz-copy-source".to_owned(), "src/a".to_owned()),
        ("x-amz-copy-source".to_owned(), "src/b".to_owned()),
    ];
    assert!(classify("PUT", "/b/dst", &twice).is_err());
}

#[test]
fn delete_objects_names_every_key() {
    let mut request = classify("POST", "/b?delete", &[]).unwrap();
    assert!(request.needs_body() && request.accesses.is_empty());
    let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Object><Key>reports/a.csv</Key></Object>
  <Object><Key>x&amp;y&#x2F;&lt;z</Key><VersionId>3</VersionId></Object>
  <Object><Key><![CDATA[c<d]]></Key></Object>
  <Object><Key> spaced </Key></Object>
  <Quiet>true</Quiet>
</Delete>"#;
    request.add_delete_keys(body).unwrap();
    let keys: Vec<&Resource> = request.accesses.iter().map(|a| &a.resource).collect();
    assert_eq!(
        keys,
        [
            &object("b", "reports/a.csv"),
            &object("b", "x&y/<z"),
            &object("b", "c<d"),
            &object("b", " spaced "),
        ]
    );
}

#[test]
fn malformed_delete_bodies_are_refused() {
    let many = format!(
        "<Delete>{}</Delete>",
        "<Object><Key>k</Key></Object>".repeat(MAX_DELETE_KEYS + 1)
    );
    for body in [
        "",
        "<Delete>",
        "<Delete></Delete>",
        "<Delete><Object></Object></Delete>",
        "<Delete><Object><Key></Key></Object></Delete>",
        "<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>",
        "<Delete><Object><Key>a</Key></Object><Other/></Delete>",
        "<Delete><Object><Key>a</Key></Object>text</Delete>",
        "<Delete><Object><Key>a</Object></Key></Delete>",
        "<!DOCTYPE d [<!ENTITY e \"x\">]><Delete><Object><Key>&e;</Key></Object></Delete>",
        "<Delete><Object><Key>&e;</Key></Object></Delete>",
        "<Delete><Object><Key>a</Key></Object></Delete><Delete/>",
        "<Delete><Object><Key>a</Key></Object></Delete>trailing",
        many.as_str(),
    ] {
        assert!(delete_keys(body.as_bytes()).is_err(), "{body:.80}");
    }
    assert!(delete_keys(&[0xff, 0xfe]).is_err());
}

#[test]
fn patterns_parse() {
    assert_eq!(ObjectGlob::parse("*"), Ok(ObjectGlob::Any));
    assert_eq!(
        ObjectGlob::parse("b"),
        Ok(ObjectGlob::Bucket("b".to_owned()))
    );
    assert_eq!(
        ObjectGlob::parse("b/r/*"),
        Ok(ObjectGlob::Prefix {
            bucket: "b".to_owned(),
            prefix: "r/".to_owned()
        })
    );
    for bad in ["b/", "b/a*b", "b/**", "*/k", "b*", "", "a b/k"] {
        assert!(ObjectGlob::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn grants_cover_only_what_lies_inside() {
    let reports = ObjectGlob::parse("b/reports/2026/*").unwrap();
    assert!(reports.grants(&object("b", "reports/2026/q1.csv")));
    assert!(!reports.grants(&object("b", "reports/2025/q1.csv")));
    assert!(!reports.grants(&object("c", "reports/2026/q1.csv")));
    assert!(reports.grants(&prefix("b", "reports/2026/q")));
    assert!(!reports.grants(&prefix("b", "reports/")));
    assert!(!reports.grants(&prefix("b", "")));
    assert!(!reports.grants(&Resource::Bucket("b".to_owned())));
    assert!(!reports.grants(&Resource::Service));
    let whole = ObjectGlob::parse("b/*").unwrap();
    assert!(whole.grants(&Resource::Bucket("b".to_owned())));
    assert!(whole.grants(&prefix("b", "")));
    let exact = ObjectGlob::parse("b/k").unwrap();
    assert!(exact.grants(&object("b", "k")) && !exact.grants(&object("b", "k2")));
    assert!(!exact.grants(&prefix("b", "k")));
}

#[test]
fn restrictions_cover_any_overlap() {
    let secret = ObjectGlob::parse("b/secret/*").unwrap();
    assert!(secret.restricts(&prefix("b", "")));
    assert!(secret.restricts(&prefix("b", "sec")));
    assert!(secret.restricts(&prefix("b", "secret/x/")));
    assert!(!secret.restricts(&prefix("b", "public/")));
    assert!(secret.restricts(&Resource::Bucket("b".to_owned())));
    assert!(secret.restricts(&Resource::Service));
    assert!(!secret.restricts(&object("b", "public/k")));
    let exact = ObjectGlob::parse("b/secret.txt").unwrap();
    assert!(exact.restricts(&prefix("b", "sec")));
    assert!(!exact.restricts(&prefix("b", "x")));
}

#[test]
fn encoding_is_sigv4s() {
    assert_eq!(encode("a b/ü~*", true), "a%20b/%C3%BC~%2A");
    assert_eq!(encode("a/b", false), "a%2Fb");
}

#[test]
fn upstream_targets_are_canonical_and_read_the_same() {
    let cases = [
        (
            "GET",
            "/b?prefix=a%20b%2Fc&list-type=2&encoding-type=url",
            "/b?encoding-type=url&list-type=2&prefix=a%20b%2Fc",
        ),
        ("GET", "/b/r/..%2Fx/%C3%A9%21", "/b/r/../x/%C3%A9%21"),
        ("POST", "/b/k?uploads", "/b/k?uploads="),
        ("GET", "/b//k/", "/b//k/"),
        ("GET", "/", "/"),
    ];
    for (method, target, upstream) in cases {
        let request = classify(method, target, &[]).unwrap();
        assert_eq!(request.upstream_target(), upstream, "{target}");
        let mut again = classify(method, upstream, &[]).unwrap();
        again.query.sort();
        let mut sorted = request.clone();
        sorted.query.sort();
        assert_eq!(again, sorted, "{target}");
    }
}
