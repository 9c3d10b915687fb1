//! PostgreSQL end-to-end set-ups: a real server with database `shop`, an agent whose policy
//! declares skill `reporter` and backend `shop-db` (dialed at an address only the redirect
//! reaches), skills as psql or raw protocol bytes, and the frontend messages tests send.

use std::net::SocketAddr;
use std::process::Output;

use crate::{Agent, Env, PgServer, unused_port};

/// What a skill dials to reach a backend: a loopback address nothing listens on, so only the
/// eBPF redirect can get a connection through.
pub fn dial_address() -> SocketAddr {
    format!("127.0.0.2:{}", unused_port("127.0.0.2"))
        .parse()
        .unwrap()
}

/// One server, one agent environment for it.
pub struct ShopDb {
    pub env: Env,
    pub pg: PgServer,
    pub dial: SocketAddr,
}

impl ShopDb {
    /// An environment on `pg` whose policy is skill `reporter`, backend `shop-db` and then
    /// `rules` (policy text), and whose config adds `extra` to a mask salt and credential
    /// `shop-db` (the server's superuser, given to the agent only).
    pub fn new(name: &str, pg: PgServer, rules: &str, extra: &str) -> Self {
        let dial = dial_address();
        let policy = format!(
            "[[skill]]\nname = \"reporter\"\n\n[[backend]]\nname = \"shop-db\"\n\
             protocol = \"postgres\"\ndial = [\"{dial}\"]\nupstream = \"{}\"\n\
             credentials = \"shop-db\"\n\n{rules}",
            pg.addr()
        );
        let env = Env::with_config(
            name,
            &policy,
            &format!(
                "mask_salt_file = \"mask.salt\"\n{extra}\n[credentials.shop-db]\n\
                 kind = \"basic\"\nenv = \"SKILLGATE_TEST_PG_LOGIN\"\n"
            ),
        );
        Self { env, pg, dial }
    }

    /// Starts the agent with the backend's login in its environment (and nowhere else).
    pub fn start_agent(&self) -> Agent {
        let login = format!("postgres:{}", self.pg.password);
        self.env
            .start_agent_with(&[], &[("SKILLGATE_TEST_PG_LOGIN", &login)])
    }

    /// Runs `program` as the skill.
    pub fn exec(&self, program: &[&str]) -> Output {
        self.env
            .exec_command("reporter", program)
            .output()
            .expect("run skillgate exec")
    }

    /// psql as the skill, any user name, no password; each `-c` runs on the same session:
    /// (stdout, stderr).
    pub fn psql(&self, commands: &[&str]) -> (String, String) {
        let port = self.dial.port().to_string();
        let host = self.dial.ip().to_string();
        let mut program = vec![
            "psql", "-h", &host, "-p", &port, "-U", "whoever", "-d", "shop", "-At", "-w",
        ];
        for command in commands {
            program.extend_from_slice(&["-c", command]);
        }
        let out = self.exec(&program);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A skill sends `bytes` to the database's address (redirected to the agent) and reads
    /// until the connection closes; returns what came back.
    pub fn raw(&self, bytes: &[u8]) -> Vec<u8> {
        self.env.raw_exchange("reporter", self.dial, bytes)
    }
}

/// A frontend message: tag, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A v3 startup message for user `x`, database `shop`.
pub fn startup() -> Vec<u8> {
    let body = b"\0\x03\0\0user\0x\0database\0shop\0\0";
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &[sql.as_bytes(), b"\0"].concat())
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(
        b'P',
        &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat(),
    )
}

/// Bind with no parameters and text results.
pub fn bind(portal: &str, statement: &str) -> Vec<u8> {
    let names = [portal.as_bytes(), b"\0", statement.as_bytes(), b"\0"].concat();
    message(b'B', &[&names[..], b"\0\0\0\0\0\0"].concat())
}

/// Execute with no row limit.
pub fn execute(portal: &str) -> Vec<u8> {
    message(b'E', &[portal.as_bytes(), b"\0\0\0\0\0"].concat())
}

pub fn sync() -> Vec<u8> {
    message(b'S', b"")
}

/// The tags of the backend messages after the startup's ReadyForQuery, space-separated.
pub fn tags_after_auth(mut answer: &[u8]) -> String {
    let mut tags = Vec::new();
    let mut ready = false;
    while answer.len() >= 5 {
        let len = u32::from_be_bytes(answer[1..5].try_into().unwrap()) as usize;
        if ready {
            tags.push(char::from(answer[0]).to_string());
        }
        ready |= answer[0] == b'Z';
        answer = &answer[(1 + len).min(answer.len())..];
    }
    tags.join(" ")
}
