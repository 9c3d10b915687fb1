//! The differential harness: random and mutated PostgreSQL protocol sessions (tests/src/
//! pgfuzz.py, run as a skill) go through the agent to a real PostgreSQL whose masked column
//! holds canary values the client never knows. Two oracles, whatever the client sent:
//!
//! - no canary reaches the skill, in any message: no 8-byte window of any canary, as it is,
//!   upper- or lower-cased, reversed or hex-encoded, appears in what the skill received;
//! - nothing the policy denies changed the database: the policy grants no writes, so its
//!   dump (schema, data, privileges) is the same after the run as before.
//!
//! `SKILLGATE_DIFF_SECONDS` bounds the run (20 s by default; `cargo xtask fuzz` runs it
//! longer) and `SKILLGATE_DIFF_SEED` replays one (the seed is printed).

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use skillgate_tests::pg::ShopDb;
use skillgate_tests::{PGFUZZ_PY, PgServer};

/// Canary characters: letters that are not hex digits, so hex output cannot match by chance.
const ALPHABET: &[u8] = b"ghjkmnpqrstuvwxyzGHJKMNPQRSTUVWXYZ";
const WINDOW: usize = 8;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: reproducible canaries from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn canary(&mut self) -> String {
        let mut text = String::from("zq");
        for _ in 0..14 {
            let i = (self.next() % ALPHABET.len() as u64) as usize;
            text.push(char::from(ALPHABET[i]));
        }
        text
    }
}

/// Every 8-byte window of every form of every canary.
fn needles(canaries: &[String]) -> HashSet<[u8; WINDOW]> {
    let mut set = HashSet::new();
    for canary in canaries {
        let hex: String = canary.bytes().map(|b| format!("{b:02x}")).collect();
        let forms = [
            canary.clone(),
            canary.to_uppercase(),
            canary.to_lowercase(),
            canary.chars().rev().collect(),
            hex,
        ];
        for form in forms {
            for window in form.as_bytes().windows(WINDOW) {
                set.insert(window.try_into().unwrap());
            }
        }
    }
    set
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

const RULES: &str = r#"
[[rule]]
name = "vault-masked"
skills = ["reporter"]
backend = "shop-db"
effect = "mask"
sql = { kinds = ["select"], objects = ["public.vault"] }
mask = { columns = ["secret"] }

[[rule]]
name = "orders"
skills = ["reporter"]
backend = "shop-db"
effect = "allow"
sql = { kinds = ["select"], objects = ["public.orders"] }

[[rule]]
name = "session"
skills = ["reporter"]
backend = "shop-db"
effect = "allow"
sql = { kinds = ["transaction", "show"] }
"#;

#[test]
fn no_canary_reaches_the_skill_and_no_denied_statement_changes_the_database() {
    let seconds: f64 = env_or("SKILLGATE_DIFF_SECONDS", 20.0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let seed: u64 = env_or(
        "SKILLGATE_DIFF_SEED",
        now.as_secs() ^ u64::from(now.subsec_nanos()),
    );
    eprintln!("pg_differential: seed {seed} (SKILLGATE_DIFF_SEED={seed} replays it), {seconds} s");
    let mut rng = Rng(seed | 1);
    let canaries: Vec<String> = (0..24).map(|_| rng.canary()).collect();

    let pg = PgServer::start();
    let values: Vec<String> = canaries
        .iter()
        .enumerate()
        .map(|(i, c)| format!("({i}, '{c}', 'note {i}')"))
        .collect();
    pg.psql_admin(
        "shop",
        &format!(
            "CREATE TABLE vault (id int PRIMARY KEY, secret text, note text); \
             INSERT INTO vault VALUES {}",
            values.join(", ")
        ),
    );
    let before = pg.dump("shop");

    let s = ShopDb::new("pg-differential", pg, RULES, "");
    let (env, dial, pg) = (&s.env, s.dial, &s.pg);
    let agent = s.start_agent();
    let out_path = env.dir.join("pgfuzz.jsonl");
    let out = env
        .exec_command("reporter", &["python3", "-c", PGFUZZ_PY])
        .args([
            dial.ip().to_string(),
            dial.port().to_string(),
            seed.to_string(),
            seconds.to_string(),
            out_path.display().to_string(),
        ])
        .output()
        .expect("run the client");
    assert!(
        out.status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let needles = needles(&canaries);
    let (mut sessions, mut masked, mut denied, mut answered) = (0, 0, 0, 0);
    let text = std::fs::read_to_string(&out_path).expect("the client's output");
    for line in text.lines() {
        let session: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let received = unhex(session["received"].as_str().unwrap());
        if let Some(at) = received
            .windows(WINDOW)
            .position(|w| needles.contains(<&[u8; WINDOW]>::try_from(w).unwrap()))
        {
            let context = &received[at.saturating_sub(120)..(at + 120).min(received.len())];
            panic!(
                "a canary reached the skill (seed {seed}, session {}):\n{}\nsent (hex): {}\n\
                 agent log:\n{}",
                session["session"],
                String::from_utf8_lossy(context),
                session["sent"],
                agent.log()
            );
        }
        sessions += 1;
        let contains = |needle: &[u8]| received.windows(needle.len()).any(|w| w == needle);
        masked += usize::from(contains(b"[masked]"));
        denied += usize::from(contains(b"C42501"));
        answered += usize::from(contains(b"Z\0\0\0\x05"));
    }
    eprintln!(
        "pg_differential: {sessions} sessions, {answered} answered, {masked} with masked rows, \
         {denied} with a denial"
    );
    // A harness that exercises nothing proves nothing.
    assert!(sessions >= 10, "only {sessions} sessions ran");
    assert!(
        masked > 0 && denied > 0 && answered > 0,
        "{masked} {denied} {answered}"
    );

    let after = pg.dump("shop");
    assert!(
        before == after,
        "the database changed (seed {seed}):\nbefore:\n{before}\nafter:\n{after}"
    );
}
