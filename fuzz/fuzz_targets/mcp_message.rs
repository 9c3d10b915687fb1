//! MCP bodies from a skill (and answers from a server): any bytes are refused or read as
//! JSON-RPC messages, and each message as the agent forwards it (re-encoded from what was
//! read) reads back as the same message: the server gets the call the policy decided. Each
//! call is decided against a fixed policy, and a result masked, without a panic; a masked
//! result masked again is the same (nothing is left for a detector to find).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use skillgate_policy::mcp::{Message, mask_result, parse_body};
use skillgate_policy::{Detector, Mask, Policy};

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::parse(
        "fuzz.toml",
        r#"
[[skill]]
name = "s"

[[backend]]
name = "b"
protocol = "mcp"
dial = ["10.0.0.1:80"]
upstream = "127.0.0.1:80"

[[rule]]
skills = ["s"]
backend = "b"
effect = "allow"
mcp = { tools = ["refund*"], arguments = [{ pointer = "/amount", max = 100 }, { pointer = "/to", pattern = "DE*" }] }

[[rule]]
skills = ["s"]
backend = "b"
effect = "approve"
mcp = { resources = ["file:///docs/*"], prompts = ["p?"] }
"#,
    )
    .expect("the fuzz policy parses")
});

fuzz_target!(|data: &[u8]| {
    let Ok(body) = parse_body(data) else {
        return;
    };
    for (value, message) in &body.messages {
        let sent = value.to_string();
        let again = parse_body(sent.as_bytes())
            .unwrap_or_else(|err| panic!("{sent} is refused when read again: {err}"));
        assert_eq!(&again.messages[0].1, message, "{sent}");
        if let Message::Request { call, .. } | Message::Notification(call) = message {
            let _ = POLICY.decide_mcp("s", &[], "b", call, None);
            let _ = POLICY.decide_mcp("s", &[], "b", call, Some("changed"));
        }
        let mask = Mask {
            fields: vec!["secret".to_owned()],
            detectors: vec![Detector::Email],
            ..Mask::default()
        };
        let mut masked = value.clone();
        if mask_result(&mut masked, &mask, b"salt").is_ok() {
            // Nothing left to find: masking again changes nothing.
            let mut again = masked.clone();
            mask_result(&mut again, &mask, b"salt").expect("a masked result masks again");
            assert_eq!(again, masked, "masked twice differs");
        }
    }
});
