//! The DNS forwarder's parsing of what skills and resolvers send: any bytes as a skill's query
//! (`Question::parse`), and the same bytes as a resolver's answer to a fixed query.
//!
//! Checked, besides never panicking: a query that parses has one name, whose refusal is a
//! response with the query's id, code REFUSED, the question and no records; a name the policy
//! lets a skill resolve matches a declared pattern (never anything the pattern cannot say).
#![no_main]

use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use libfuzzer_sys::fuzz_target;
use skillgate::proxy::dns::message::{Answer, Question};
use skillgate_policy::dns::{NamePattern, normalize};
use skillgate_policy::{DnsRequest, Effect, Policy};

const POLICY: &str = r#"
[[skill]]
name = "s"
[[rule]]
skills = ["s"]
dns = ["*.mirror.internal", "orders.internal"]
dns_types = ["TXT"]
effect = "allow"
"#;

fn policy() -> &'static Policy {
    static POLICY_ONCE: OnceLock<Policy> = OnceLock::new();
    POLICY_ONCE.get_or_init(|| Policy::parse("fuzz.toml", POLICY).unwrap())
}

/// A fixed, well-formed query the fuzzed bytes answer.
fn fixed() -> &'static Question {
    static QUESTION: OnceLock<Question> = OnceLock::new();
    QUESTION.get_or_init(|| {
        let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["orders", "internal"] {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        Question::parse(&query).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = Answer::parse(data, fixed(), 0x1234) {
        let reply = Message::from_vec(&answer.for_skill(fixed())).expect("an answer re-encodes");
        assert_eq!(reply.metadata.id, fixed().id());
    }
    let Ok(question) = Question::parse(data) else {
        return;
    };
    let upstream = Message::from_vec(&question.upstream(7)).expect("an upstream query decodes");
    assert_eq!((upstream.metadata.id, upstream.queries.len()), (7, 1));
    assert!(upstream.additionals.is_empty() && upstream.answers.is_empty());
    let refusal = Message::from_vec(&question.refusal()).expect("a refusal decodes");
    assert_eq!(refusal.metadata.id, question.id());
    assert_eq!(refusal.metadata.message_type, MessageType::Response);
    assert_eq!(refusal.metadata.response_code, ResponseCode::Refused);
    assert_eq!(refusal.queries.len(), 1);
    assert!(refusal.answers.is_empty() && refusal.additionals.is_empty());
    let decision = policy().decide_dns(&DnsRequest {
        skill: "s",
        name: &question.name,
        record_type: &question.record_type,
    });
    if decision.effect == Effect::Allow {
        let name = normalize(&question.name).expect("an allowed name is a host name");
        let patterns = ["*.mirror.internal", "orders.internal"];
        assert!(
            patterns
                .iter()
                .any(|p| NamePattern::parse(p).unwrap().matches(&name)),
            "{name} was allowed"
        );
        assert!(["A", "AAAA", "CNAME", "TXT"].contains(&question.record_type.as_str()));
    }
});
