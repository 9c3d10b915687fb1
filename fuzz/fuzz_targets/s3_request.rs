//! S3 requests from a skill: any method, target, copy source or DeleteObjects body is
//! refused or classified, and what the agent sends upstream (rebuilt from the
//! classification) classifies the same again: the server reads the keys the policy decided.
//! A DeleteObjects body's keys, written back as XML, read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skillgate_policy::s3::{classify, delete_keys};

const METHODS: [&str; 6] = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    // target \n copy source \n body
    let mut parts = text.splitn(3, '\n');
    let target = parts.next().unwrap_or_default();
    let source = parts.next();
    let body = parts.next().unwrap_or_default();
    let method = METHODS[usize::from(first) % METHODS.len()];
    let headers: Vec<(String, String)> = source
        .filter(|s| !s.is_empty())
        .map(|s| ("x-amz-copy-source".to_owned(), s.to_owned()))
        .into_iter()
        .collect();
    if let Ok(mut request) = classify(method, target, &headers) {
        let upstream = request.upstream_target();
        let mut again = classify(method, &upstream, &headers)
            .unwrap_or_else(|err| panic!("{target:?} went upstream as {upstream:?}: {err}"));
        // Upstream, the parameters are sorted.
        request.query.sort();
        again.query.sort();
        assert_eq!(again, request, "{target:?} went upstream as {upstream:?}");
    }
    if let Ok(keys) = delete_keys(body.as_bytes()) {
        let escaped: String = keys
            .iter()
            .map(|key| {
                let key = key
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('\r', "&#13;");
                format!("<Object><Key>{key}</Key></Object>")
            })
            .collect();
        let again = delete_keys(format!("<Delete>{escaped}</Delete>").as_bytes())
            .unwrap_or_else(|err| panic!("{keys:?} written back is refused: {err}"));
        assert_eq!(again, keys);
    }
});
