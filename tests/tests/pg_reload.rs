//! A policy reload while a PostgreSQL session is open: each statement is decided by the policy
//! in force when it arrives, and the session never masks by a catalog snapshot taken for
//! other masks than the ones its decisions carry.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::Stdio;
use std::time::Duration;

use skillgate_tests::PgServer;
use skillgate_tests::pg::ShopDb;

const CARD: &str = "4111 1111 1111 1111";

const ORDERS: &str = r#"
[[rule]]
name = "read-orders"
skills = ["reporter"]
backend = "shop-db"
effect = "allow"
sql = { kinds = ["select"], objects = ["public.orders"] }
"#;

const CUSTOMERS: &str = r#"
[[rule]]
name = "read-customers-masked"
skills = ["reporter"]
backend = "shop-db"
effect = "mask"
sql = { kinds = ["select"], objects = ["public.customers"] }
mask = { columns = ["email"] }

"#;

/// A skill holding one session open: a statement, then (once the test writes a line to its
/// stdin) the same statement and a read of `orders` on that session, then the statement on a
/// new session. Prints one line per result: `row ...` or `error SQLSTATE message`.
const SKILL: &str = r#"
import sys, psycopg2
host, port = sys.argv[1], int(sys.argv[2])
QUERY = "SELECT email AS e, card AS c FROM customers WHERE id = 1"
def connect():
    conn = psycopg2.connect(host=host, port=port, user="whoever", dbname="shop")
    conn.autocommit = True
    return conn
def run(conn, sql):
    try:
        cur = conn.cursor()
        cur.execute(sql)
        print("row", "|".join(str(v) for v in cur.fetchone()), flush=True)
    except psycopg2.Error as e:
        print("error", e.pgcode, str(e).splitlines()[0], flush=True)
conn = connect()
run(conn, QUERY)
print("ready", flush=True)
sys.stdin.readline()
run(conn, QUERY)
run(conn, "SELECT count(*) FROM orders")
run(connect(), QUERY)
"#;

#[test]
fn a_reload_mid_session_decides_the_next_statement_and_never_unmasks() {
    let s = ShopDb::new(
        "pg-reload",
        PgServer::start(),
        &format!("{CUSTOMERS}{ORDERS}"),
        "",
    );
    let (env, dial) = (&s.env, s.dial);
    let agent = s.start_agent();
    let mut skill = env
        .exec_command("reporter", &["python3", "-c", SKILL])
        .args([dial.ip().to_string(), dial.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the skill");
    let mut lines = BufReader::new(skill.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("a line from the skill").unwrap();
    // Before the reload: email masked, card not (no rule masks it yet).
    assert_eq!(next(), format!("row [masked]|{CARD}"), "{}", agent.log());
    assert_eq!(next(), "ready");

    // The reload masks `card` too and drops the grant on orders.
    // (One write, so no reload sees half the change.)
    let rules = format!("{CUSTOMERS}{ORDERS}");
    env.edit_policy(
        &rules,
        &CUSTOMERS.replace("[\"email\"]", "[\"email\", \"card\"]"),
    );
    // SAFETY: kill with the agent's pid and a valid signal number.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    agent.wait_for_log("policy reloaded", Duration::from_secs(10));
    skill.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();

    // The open session: its catalog snapshot was taken for `email` alone, so it could not
    // find `card` under its alias: the statement is refused, never answered unmasked.
    let same = next();
    assert!(
        !same.contains(CARD),
        "the card number reached the skill: {same}"
    );
    assert!(
        same.starts_with(
            "error 42501 skillgate: the policy now masks columns this session \
             cannot find (it changed after the session began): reconnect"
        ),
        "{same}"
    );
    // The grant the reload removed no longer holds on the open session.
    let orders = next();
    assert!(orders.starts_with("error 42501"), "{orders}");
    assert!(orders.contains("public.orders"), "{orders}");
    // A new session is set up by the new policy: both columns masked.
    assert_eq!(next(), "row [masked]|[masked]");
    assert!(skill.wait().unwrap().success());
}
