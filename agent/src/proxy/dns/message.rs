//! DNS messages as the forwarder reads them: a skill's query (one question), the refusal it
//! may get, and a resolver's answer (its CNAME chain and addresses). Parsing is
//! hickory-proto's; anything it cannot decode, or that is not the plain shape asked for, is an
//! error and goes no further.
//!
//! What goes to a resolver is never the skill's bytes but a query the forwarder writes: the
//! question in lower case, a fresh id, no EDNS option and no other record. The id, the case
//! of the name's letters (0x20 bits) and EDNS options would otherwise carry whatever the
//! skill puts in them past the name the policy allowed. The answer is rebuilt the same way,
//! with the skill's id and question.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};

/// A skill's query, decoded.
pub struct Question {
    message: Message,
    /// The name asked for as the wire spells it (escaped where a label holds odd bytes).
    pub name: String,
    /// The record type's mnemonic (`A`, `TXT`, `TYPE65534`).
    pub record_type: String,
}

impl Question {
    /// Decodes a skill's query: a standard query (not a response, not an update or notify)
    /// with exactly one question, of class IN.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let message = Message::from_vec(bytes).map_err(|e| format!("not a DNS message: {e}"))?;
        if message.metadata.message_type != MessageType::Query {
            return Err("a response, not a query".to_owned());
        }
        if message.metadata.op_code != OpCode::Query {
            return Err(format!(
                "opcode {:?} is not a standard query",
                message.metadata.op_code
            ));
        }
        let [query] = message.queries.as_slice() else {
            return Err(format!(
                "{} questions (one is what resolvers answer)",
                message.queries.len()
            ));
        };
        if query.query_class() != DNSClass::IN {
            return Err(format!("class {} is not IN", query.query_class()));
        }
        if !message.answers.is_empty() || !message.authorities.is_empty() {
            return Err("a query that carries records".to_owned());
        }
        Ok(Self {
            name: query.name().to_ascii(),
            record_type: type_name(query.query_type()),
            message,
        })
    }

    pub fn id(&self) -> u16 {
        self.message.metadata.id
    }

    /// How logs and the store show it: `A orders.internal.`
    pub fn shown(&self) -> String {
        format!("{} {}", self.record_type, self.name)
    }

    /// The query a resolver is asked in the skill's stead, with id `id` (see the module doc).
    pub fn upstream(&self, id: u16) -> Vec<u8> {
        let asked = &self.message.queries[0];
        let mut query = Message::query();
        query.metadata.id = id;
        query.metadata.recursion_desired = self.message.metadata.recursion_desired;
        let mut question = Query::query(asked.name().to_lowercase(), asked.query_type());
        question.set_query_class(asked.query_class());
        query.add_query(question);
        if self.message.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            query.set_edns(edns);
        }
        // A question decoded from the wire always encodes.
        query.to_vec().unwrap_or_default()
    }

    /// The answer that refuses it: REFUSED, with the question, as a resolver refuses.
    pub fn refusal(&self) -> Vec<u8> {
        let mut answer = Message::error_msg(self.id(), OpCode::Query, ResponseCode::Refused);
        answer.metadata.recursion_desired = self.message.metadata.recursion_desired;
        answer.add_queries(self.message.queries.iter().cloned());
        // A message of one question always encodes.
        answer.to_vec().unwrap_or_default()
    }
}

/// A record type's mnemonic, `TYPEnnn` (RFC 3597) for those without one.
fn type_name(record_type: RecordType) -> String {
    match record_type {
        RecordType::Unknown(code) => format!("TYPE{code}"),
        known => <&'static str>::from(known).to_owned(),
    }
}

/// What a resolver answered, as far as the forwarder needs it.
#[derive(Debug)]
pub struct Answer {
    message: Message,
    pub code: String,
    pub truncated: bool,
    /// CNAME records: (owner, target), as the wire spells them.
    pub aliases: Vec<(String, String)>,
    /// Address records: (owner, address, time to live in seconds).
    pub addresses: Vec<(String, IpAddr, u32)>,
}

impl Answer {
    /// Decodes a resolver's answer to `question`, asked with id `id`: a response with that id
    /// and the question (letters in any case).
    pub fn parse(bytes: &[u8], question: &Question, id: u16) -> Result<Self, String> {
        let message = Message::from_vec(bytes).map_err(|e| format!("not a DNS message: {e}"))?;
        if message.metadata.message_type != MessageType::Response || message.metadata.id != id {
            return Err("not the answer to this query".to_owned());
        }
        if message.queries != question.message.queries {
            return Err("the answer is to another question".to_owned());
        }
        let mut answer = Self {
            code: message.metadata.response_code.to_string(),
            truncated: message.metadata.truncation,
            aliases: Vec::new(),
            addresses: Vec::new(),
            message,
        };
        for record in &answer.message.answers {
            let owner = record.name.to_ascii();
            match &record.data {
                RData::CNAME(target) => answer.aliases.push((owner, target.0.to_ascii())),
                RData::A(a) => answer.addresses.push((owner, IpAddr::V4(a.0), record.ttl)),
                RData::AAAA(aaaa) => answer
                    .addresses
                    .push((owner, IpAddr::V6(aaaa.0), record.ttl)),
                _ => {}
            }
        }
        Ok(answer)
    }

    /// The answer as the skill gets it: the resolver's records under the skill's id and
    /// question.
    pub fn for_skill(mut self, question: &Question) -> Vec<u8> {
        self.message.metadata.id = question.id();
        self.message.queries.clone_from(&question.message.queries);
        // A message decoded from the wire re-encodes.
        self.message.to_vec().unwrap_or_else(|_| question.refusal())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::str::FromStr as _;

    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::{Name, Record};

    use super::*;

    fn query(name: &str, record_type: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 4242;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_str(name).unwrap(), record_type));
        message.to_vec().unwrap()
    }

    #[test]
    fn a_query_is_read_and_refused_as_a_resolver_would() {
        let question = Question::parse(&query("Orders.internal.", RecordType::AAAA)).unwrap();
        assert!(
            question.name.eq_ignore_ascii_case("orders.internal."),
            "{}",
            question.name
        );
        assert_eq!(question.record_type, "AAAA");
        let refusal = Message::from_vec(&question.refusal()).unwrap();
        assert_eq!(refusal.metadata.id, 4242);
        assert_eq!(refusal.metadata.response_code, ResponseCode::Refused);
        assert_eq!(refusal.metadata.message_type, MessageType::Response);
        assert_eq!(refusal.queries, question.message.queries);
        assert!(refusal.answers.is_empty());
        let odd = Question::parse(&query("a.b.", RecordType::Unknown(65534))).unwrap();
        assert_eq!(odd.record_type, "TYPE65534");
    }

    #[test]
    fn what_is_not_one_plain_question_is_an_error() {
        let mut two = Message::from_vec(&query("a.internal.", RecordType::A)).unwrap();
        two.add_query(Query::query(
            Name::from_str("b.internal.").unwrap(),
            RecordType::A,
        ));
        let mut response = Message::from_vec(&query("a.internal.", RecordType::A)).unwrap();
        response.metadata.message_type = MessageType::Response;
        let mut update = Message::from_vec(&query("a.internal.", RecordType::A)).unwrap();
        update.metadata.op_code = OpCode::Update;
        for bad in [two, response, update] {
            assert!(Question::parse(&bad.to_vec().unwrap()).is_err());
        }
        assert!(Question::parse(&[0u8; 11]).is_err());
        assert!(Question::parse(&query("a.internal.", RecordType::A)[..20]).is_err());
    }

    #[test]
    fn an_answer_gives_its_chain_and_addresses() {
        let bytes = query("www.internal.", RecordType::A);
        let question = Question::parse(&bytes).unwrap();
        let mut message = Message::from_vec(&bytes).unwrap();
        message.metadata.message_type = MessageType::Response;
        let www = Name::from_str("www.internal.").unwrap();
        let lb = Name::from_str("lb.elsewhere.").unwrap();
        message.add_answer(Record::from_rdata(www, 30, RData::CNAME(CNAME(lb.clone()))));
        message.add_answer(Record::from_rdata(
            lb,
            5,
            RData::A(A(Ipv4Addr::new(10, 0, 0, 7))),
        ));
        let answer = Answer::parse(&message.to_vec().unwrap(), &question, 4242).unwrap();
        assert_eq!(answer.code, "No Error");
        assert_eq!(
            answer.aliases,
            [("www.internal.".to_owned(), "lb.elsewhere.".to_owned())]
        );
        assert_eq!(
            answer.addresses,
            [(
                "lb.elsewhere.".to_owned(),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
                5
            )]
        );
        assert!(Answer::parse(&message.to_vec().unwrap(), &question, 1).is_err());
        // The skill gets it under its own id and question.
        let reply = Message::from_vec(&answer.for_skill(&question)).unwrap();
        assert_eq!(reply.metadata.id, 4242);
        assert_eq!(reply.answers.len(), 2);
    }

    #[test]
    fn the_resolver_is_asked_only_the_question() {
        // The skill's id, the case of its letters and its EDNS options are all it controls
        // beyond the name: none of them reaches the resolver.
        let mut message =
            Message::from_vec(&query("SeCrEt.Mirror.internal.", RecordType::A)).unwrap();
        let mut edns = Edns::new();
        edns.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                65001,
                b"exfiltrated".to_vec(),
            ));
        message.set_edns(edns);
        message.add_additional(Record::from_rdata(
            Name::from_str("x.internal.").unwrap(),
            0,
            RData::A(A(Ipv4Addr::new(1, 2, 3, 4))),
        ));
        let question = Question::parse(&message.to_vec().unwrap()).unwrap();
        let upstream = question.upstream(7);
        assert!(!upstream.windows(11).any(|w| w == b"exfiltrated"));
        let sent = Message::from_vec(&upstream).unwrap();
        assert_eq!(sent.metadata.id, 7);
        assert_eq!(sent.queries[0].name().to_ascii(), "secret.mirror.internal.");
        assert!(sent.additionals.is_empty());
        assert!(
            sent.edns
                .as_ref()
                .is_some_and(|e| e.options().as_ref().is_empty())
        );
    }
}
