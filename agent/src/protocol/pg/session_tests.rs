use super::*;

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::put_message(&mut out, tag, body);
    out.to_vec()
}

fn allowed(mask: Mask) -> Decided {
    decided("1.1", Answer::Allow(mask))
}

fn decided(id: &str, answer: Answer) -> Decided {
    Decided {
        id: id.to_owned(),
        answer,
    }
}

/// The decision each backend message's record carries.
fn decisions(session: &mut Session, messages: &[Vec<u8>]) -> Vec<(String, Option<String>)> {
    let mut out = BytesMut::new();
    messages
        .iter()
        .filter_map(
            |m| match session.server(m, &Catalog::new(), b"", &mut out).unwrap()? {
                Noted::Completed { tag, decision, .. } => Some((tag, decision)),
                Noted::Failed { code, decision, .. } => Some((code, decision)),
                Noted::Denied { decision, .. } => Some(("denied".to_owned(), decision)),
            },
        )
        .collect()
}

/// Pipelined extended queries: each result carries the decision of the statement its
/// Execute ran, a named statement's on every run; an error carries the decision of the
/// message it answers (a Parse's, a Bind's, an Execute's) and the rest of its batch is
/// skipped; a Query's results carry the Query's.
#[test]
fn results_carry_their_statements_decision() {
    let mut session = Session::default();
    let mut out = BytesMut::new();
    let allow = |id| Some(decided(id, Answer::Allow(Mask::default())));
    let deny = |id| {
        let answer = Answer::Deny {
            message: "denied".to_owned(),
            detail: "rule".to_owned(),
        };
        Some(decided(id, answer))
    };
    let bind = |portal: &str, statement: &str| {
        message(
            b'B',
            format!("{portal}\0{statement}\0\0\0\0\0\0\0").as_bytes(),
        )
    };
    let execute = |portal: &str| message(b'E', format!("{portal}\0\0\0\0\0").as_bytes());
    let sync = message(b'S', b"");
    let batch: Vec<(Vec<u8>, Option<Decided>)> = vec![
        (message(b'P', b"a\0SELECT 1\0\0\0"), allow("7.1")),
        (message(b'P', b"b\0SELECT 2\0\0\0"), allow("7.2")),
        (bind("p", "b"), None),
        (execute("p"), None),
        (bind("q", "a"), None),
        (execute("q"), None),
        (execute("p"), None),
        (sync.clone(), None),
        (bind("", "a"), None),
        (execute(""), None),
        (execute("q"), None),
        (sync.clone(), None),
        (message(b'P', b"c\0DELETE FROM t\0\0\0"), deny("7.3")),
        (sync.clone(), None),
        (message(b'P', b"d\0SELECT 5\0\0\0"), allow("7.5")),
        (
            message(b'P', b"e\0SELECT * FROM nowhere\0\0\0"),
            allow("7.6"),
        ),
        (message(b'D', b"Sd\0"), None),
        (bind("r", "d"), None),
        (execute("r"), None),
        (sync, None),
        (message(b'Q', b"SELECT 3; SELECT 4\0"), allow("7.4")),
    ];
    for (m, d) in batch {
        assert!(!session.client(&m, d, &mut out).unwrap());
    }
    let complete = |tag: &str| message(b'C', format!("{tag}\0").as_bytes());
    let ready = message(b'Z', b"I");
    let denied_nonce = String::from_utf8_lossy(&out)
        .split("skillgate_denied_")
        .nth(1)
        .map(|rest| format!("skillgate_denied_{}", &rest[..24]))
        .unwrap();
    let stand_in_error = message(
        b'E',
        format!("SERROR\0C42601\0Msyntax error at or near \"{denied_nonce}\"\0\0").as_bytes(),
    );
    let (parsed, bound) = (message(b'1', b""), message(b'2', b""));
    let server = [
        parsed.clone(),
        parsed.clone(),
        bound.clone(),
        complete("SELECT 2"),
        bound.clone(),
        complete("SELECT 1"),
        complete("SELECT 2"),
        ready.clone(),
        bound,
        message(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"),
        ready.clone(),
        stand_in_error,
        ready.clone(),
        // d parses; e fails at Parse (no such table): the rest is skipped.
        parsed,
        message(
            b'E',
            b"SERROR\0C42P01\0Mrelation \"nowhere\" does not exist\0\0",
        ),
        ready.clone(),
        complete("SELECT 3"),
        complete("SELECT 4"),
        ready,
    ];
    let seen = decisions(&mut session, &server);
    let want: Vec<(String, Option<String>)> = [
        ("SELECT 2", "7.2"),
        ("SELECT 1", "7.1"),
        ("SELECT 2", "7.2"),
        ("22012", "7.1"),
        ("denied", "7.3"),
        ("42P01", "7.6"),
        ("SELECT 3", "7.4"),
        ("SELECT 4", "7.4"),
    ]
    .iter()
    .map(|(what, id)| ((*what).to_owned(), Some((*id).to_owned())))
    .collect();
    assert_eq!(seen, want);
}

/// Found by the pg_session fuzz target: a ReadyForQuery while the skill's batch was still
/// open emptied the cycle queue, and the next Query panicked on it.
#[test]
fn ready_for_query_for_an_open_batch_ends_the_session() {
    let mut session = Session::default();
    let mut out = BytesMut::new();
    let parse = message(b'P', b"a\0SELECT 1\0\0\0");
    let answer = Some(allowed(Mask::default()));
    assert!(!session.client(&parse, answer, &mut out).unwrap());
    let ready = session.server(&message(b'Z', b"I"), &Catalog::new(), b"", &mut out);
    assert!(matches!(ready, Err(Ended { code: "08P01", .. })));
    let query = message(b'Q', b"SELECT 1\0");
    let answer = Some(allowed(Mask::default()));
    assert!(!session.client(&query, answer, &mut out).unwrap());
}

#[test]
fn rows_with_no_statement_in_flight_end_the_session() {
    let mut session = Session::default();
    let mut out = BytesMut::new();
    let row = message(b'D', b"\0\x01\0\0\0\x01x");
    assert!(
        session
            .server(&row, &Catalog::new(), b"", &mut out)
            .is_err()
    );
    assert!(out.is_empty());
}

/// Found by the pg_session fuzz target: a ReadyForQuery the backend made up moved the
/// session to a batch that only bound a portal, and COPY data "for" it went through.
#[test]
fn rows_for_a_batch_that_ran_nothing_end_the_session() {
    let mut session = Session::default();
    let mut out = BytesMut::new();
    let bind = message(b'B', b"\0\0\0\0\0\0\0\0");
    assert!(!session.client(&bind, None, &mut out).unwrap());
    assert!(!session.client(&message(b'S', b""), None, &mut out).unwrap());
    out.clear();
    for tag in [b'D', b'd', b'H', b'W'] {
        let ended = session.server(&message(tag, b"\0\0\0"), &Catalog::new(), b"", &mut out);
        assert!(matches!(ended, Err(Ended { code: "08P01", .. })), "{tag}");
    }
    let ready = session.server(&message(b'Z', b"I\0"), &Catalog::new(), b"", &mut out);
    assert!(matches!(ready, Err(Ended { code: "08P01", .. })));
    assert!(out.is_empty());
}

/// A driver that described its statement in an earlier batch executes it with no
/// Describe: the agent adds one, masks the rows by its answer, and keeps the answer from
/// the skill (which did not ask).
#[test]
fn an_execute_without_its_describe_gets_one_from_the_agent() {
    let mask = Mask {
        columns: vec!["email".to_owned()],
        ..Mask::default()
    };
    let catalog = Catalog::new();
    let mut session = Session::default();
    let mut out = BytesMut::new();
    let parse = message(b'P', b"s1\0SELECT email FROM customers\0\0\0");
    let allow = Some(allowed(mask));
    assert!(!session.client(&parse, allow, &mut out).unwrap());
    let bind = message(b'B', b"\0s1\0\0\0\0\0\0\x01\0\x01");
    let execute = message(b'E', b"\0\0\0\0\0");
    for m in [&bind, &execute, &message(b'S', b"")] {
        assert!(!session.client(m, None, &mut out).unwrap());
    }
    let sent = [
        parse,
        bind,
        message(b'D', b"P\0"),
        execute,
        message(b'S', b""),
    ]
    .concat();
    assert_eq!(&out[..], &sent[..]);
    out.clear();
    // email: text (oid 25) in binary format.
    let description = message(
        b'T',
        b"\0\x01email\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\x01",
    );
    let row = message(b'D', b"\0\x01\0\0\0\x03a@b");
    for m in [&message(b'1', b""), &message(b'2', b""), &description, &row] {
        session.server(m, &catalog, b"", &mut out).unwrap();
    }
    let masked = [
        message(b'1', b""),
        message(b'2', b""),
        message(b'D', b"\0\x01\0\0\0\x08[masked]"),
    ]
    .concat();
    assert_eq!(&out[..], &masked[..]);
}

/// A setting that makes the server read statements differently from the classifier
/// (changed where the policy could not see it, inside a function) ends the session.
#[test]
fn a_server_reading_statements_differently_ends_the_session() {
    let mut session = Session::default();
    let mut out = BytesMut::new();
    let catalog = Catalog::new();
    let status = |name: &str, value: &str| message(b'S', format!("{name}\0{value}\0").as_bytes());
    for (name, value) in [
        ("client_encoding", "UTF8"),
        ("standard_conforming_strings", "on"),
    ] {
        assert!(
            session
                .server(&status(name, value), &catalog, b"", &mut out)
                .is_ok()
        );
    }
    for (name, value) in [
        ("client_encoding", "SJIS"),
        ("standard_conforming_strings", "off"),
    ] {
        let ended = session.server(&status(name, value), &catalog, b"", &mut out);
        assert!(matches!(ended, Err(Ended { code: "42501", .. })), "{name}");
    }
}

fn masked() -> Decided {
    allowed(Mask {
        columns: vec!["email".to_owned()],
        ..Mask::default()
    })
}

/// Feeds backend messages; `Err` at the first the session refuses.
fn replies(session: &mut Session, messages: &[Vec<u8>], out: &mut BytesMut) -> Result<(), Ended> {
    for m in messages {
        session.server(m, &Catalog::new(), b"", out)?;
    }
    Ok(())
}

/// Issue 24: after an error in the extended protocol the server skips everything up to Sync,
/// a simple Query included. The skipped Query opens no cycle: the masked Query's rows that
/// follow are its own, and masked.
#[test]
fn messages_skipped_after_an_error_open_no_cycle() {
    let mut session = Session::default();
    let mut out = BytesMut::new();
    let unmasked = || Some(allowed(Mask::default()));
    let sent: Vec<(Vec<u8>, Option<Decided>)> = vec![
        (message(b'P', b"\0SELECT 1/0\0\0\0"), unmasked()),
        (message(b'B', b"\0\0\0\0\0\0\0\0"), None),
        (message(b'E', b"\0\0\0\0\0"), None),
        (message(b'Q', b"SELECT 1\0"), unmasked()),
        (message(b'P', b"b\0SELECT 2\0\0\0"), unmasked()),
        (message(b'B', b"\0b\0\0\0\0\0\0\0"), None),
        (message(b'E', b"\0\0\0\0\0"), None),
        (message(b'S', b""), None),
        (
            message(b'Q', b"SELECT email FROM customers\0"),
            Some(masked()),
        ),
    ];
    for (m, d) in sent {
        assert!(!session.client(&m, d, &mut out).unwrap());
    }
    out.clear();
    let description = message(
        b'T',
        b"\0\x01email\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
    );
    let server = [
        message(b'1', b""),
        message(b'2', b""),
        message(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0"),
        message(b'Z', b"I"),
        description,
        message(b'D', b"\0\x01\0\0\0\x03a@b"),
        message(b'C', b"SELECT 1\0"),
        message(b'Z', b"I"),
    ];
    replies(&mut session, &server, &mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("a@b") && text.contains("[masked]"),
        "{text:?}"
    );
    // Once the error is in, what the skill sends up to its Sync is discarded, not queued: a
    // reply to it would be a surprise.
    let mut session = Session::default();
    for m in [
        message(b'B', b"\0\0\0\0\0\0\0\0"),
        message(b'E', b"\0\0\0\0\0"),
    ] {
        assert!(!session.client(&m, None, &mut out).unwrap());
    }
    let error = message(b'E', b"SERROR\0C26000\0Mno such statement\0\0");
    replies(&mut session, &[error], &mut out).unwrap();
    assert!(session.discarding());
    let query = message(b'Q', b"SELECT 1\0");
    out.clear();
    assert!(!session.client(&query, None, &mut out).unwrap());
    assert_eq!(&out[..], &message(b'Q', b"skillgate_discarded\0")[..]);
    let ended = replies(&mut session, &[message(b'Z', b"I")], &mut out);
    assert!(matches!(ended, Err(Ended { code: "08P01", .. })));
}

/// Under a mask, errors and notices keep their severity and SQLSTATE, nothing else; in the
/// same transaction after the masked statement too, until it ends.
#[test]
fn errors_and_notices_under_a_mask_carry_only_their_sqlstate() {
    let mut session = Session::default();
    let mut out = BytesMut::new();
    let begin = message(b'Q', b"BEGIN\0");
    assert!(
        !session
            .client(&begin, Some(allowed(Mask::default())), &mut out)
            .unwrap()
    );
    let query = message(
        b'Q',
        b"SELECT (SELECT string_agg(email, ';') FROM customers)::int\0",
    );
    assert!(!session.client(&query, Some(masked()), &mut out).unwrap());
    let later = message(b'Q', b"COMMIT\0");
    assert!(
        !session
            .client(&later, Some(allowed(Mask::default())), &mut out)
            .unwrap()
    );
    out.clear();
    let leak =
        b"SERROR\0VERROR\0C22P02\0Minvalid input syntax for type integer: \"a@b\"\0Dsecret a@b\0\0";
    let notice = message(b'N', b"SNOTICE\0VNOTICE\0C00000\0Mvalue a@b\0\0");
    let notification = message(b'A', b"\0\0\0\x07chan\0a@b\0");
    let commit_error = message(b'E', b"SERROR\0VERROR\0C23503\0Mkey (email)=(a@b)\0\0");
    replies(
        &mut session,
        &[
            message(b'Z', b"T"),
            notice,
            notification,
            message(b'E', leak),
            message(b'Z', b"E"),
        ],
        &mut out,
    )
    .unwrap();
    let noted = session
        .server(&commit_error, &Catalog::new(), b"", &mut out)
        .unwrap();
    assert!(
        matches!(noted, Some(Noted::Failed { ref code, ref message, .. })
        if code == "23503" && !message.contains("a@b"))
    );
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("a@b"), "{text:?}");
    assert!(text.contains("22P02") && text.contains("23503") && text.contains("NOTICE"));
    // The transaction ended: errors of later statements that read no masked column keep their
    // text.
    replies(&mut session, &[message(b'Z', b"I")], &mut out).unwrap();
    let query = message(b'Q', b"SELECT 'x'::int\0");
    assert!(
        !session
            .client(&query, Some(allowed(Mask::default())), &mut out)
            .unwrap()
    );
    out.clear();
    let error = message(b'E', b"SERROR\0C22P02\0Mbad \"x\"\0\0");
    replies(&mut session, std::slice::from_ref(&error), &mut out).unwrap();
    assert_eq!(&out[..], &error[..]);
}

/// libpq's COPY FROM STDIN in the extended protocol: the batch's Sync arrives inside the COPY
/// (the server ignores it), CopyDone and a Sync of its own end it; one ReadyForQuery.
#[test]
fn a_copy_in_follows_the_server() {
    let mut session = Session::default();
    let mut out = BytesMut::new();
    let parse = message(b'P', b"\0COPY t FROM STDIN\0\0\0");
    assert!(
        !session
            .client(&parse, Some(allowed(Mask::default())), &mut out)
            .unwrap()
    );
    for m in [
        message(b'B', b"\0\0\0\0\0\0\0\0"),
        message(b'E', b"\0\0\0\0\0"),
        message(b'S', b""),
        message(b'd', b"1\n"),
        message(b'c', b""),
        message(b'S', b""),
    ] {
        assert!(!session.client(&m, None, &mut out).unwrap());
    }
    let server = [
        message(b'1', b""),
        message(b'2', b""),
        message(b'G', b"\0\0\x01\0\0"),
        message(b'C', b"COPY 1\0"),
        message(b'Z', b"I"),
    ];
    replies(&mut session, &server, &mut out).unwrap();
    let ended = replies(&mut session, &[message(b'Z', b"I")], &mut out);
    assert!(matches!(ended, Err(Ended { code: "08P01", .. })));
}

/// A reply the oldest message cannot have: the session ends.
#[test]
fn replies_out_of_turn_end_the_session() {
    let cases: [(&[u8], Vec<u8>); 4] = [
        (b"Q", message(b'1', b"")),
        (b"P", message(b'D', b"\0\0")),
        (b"Q", message(b'D', b"\0\0")),
        (b"S", message(b'C', b"SELECT 1\0")),
    ];
    for (first, reply) in cases {
        let mut session = Session::default();
        let mut out = BytesMut::new();
        let sent = match first {
            b"Q" => message(b'Q', b"SELECT 1\0"),
            b"P" => message(b'P', b"\0SELECT 1\0\0\0"),
            _ => message(b'S', b""),
        };
        let answer = (first != b"S").then(|| allowed(Mask::default()));
        assert!(!session.client(&sent, answer, &mut out).unwrap());
        out.clear();
        let ended = session.server(&reply, &Catalog::new(), b"", &mut out);
        assert!(
            matches!(ended, Err(Ended { code: "08P01", .. })),
            "{first:?}"
        );
        assert!(out.is_empty());
    }
}
