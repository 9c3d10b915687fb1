//! `skillgate`: host-level enforcement agent for AI skills. The command line; the agent
//! itself is the library (`lib.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skillgate::{cli, config, daemon};

/// Host-level enforcement agent for AI skills.
///
/// Skills are the processes in the skills cgroup. They cannot reach the network except through
/// skillgate's proxy: eBPF programs on that cgroup send every TCP connect to the proxy, which
/// identifies the skill from kernel facts (cgroup, pid, uid) and applies the policy.
#[derive(Debug, Parser)]
#[command(name = "skillgate", version, propagate_version = true)]
struct Cli {
    /// Agent configuration file.
    #[arg(long, short, global = true, env = "SKILLGATE_CONFIG", default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Log lines as plain text (journald-friendly) or as JSON objects.
    #[arg(long, global = true, env = "SKILLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: attach the eBPF programs to the skills cgroup and serve the proxy.
    ///
    /// Enforcement is pinned in bpffs and outlives the agent: after SIGTERM skills get
    /// "connection refused" until an agent runs again (it adopts the pinned programs) or
    /// `skillgate detach` removes enforcement. SIGHUP, or a change to the policy file
    /// (checked every 2 s), reloads the policy; a policy with errors is rejected and the one
    /// in force stays. Logs go to stderr; set
    /// SKILLGATE_LOG (e.g. `debug`, `skillgate=trace`) to change the level.
    Run,
    /// Run a command as a skill: inside the skill's cgroup, below the skills cgroup.
    ///
    /// Refuses to start the command unless enforcement is attached to the skills cgroup,
    /// so a skill never runs with direct network access. The command never holds the
    /// capabilities that lead around enforcement (CAP_NET_RAW, CAP_NET_ADMIN, CAP_SYS_ADMIN,
    /// CAP_BPF, ...), and runs with no_new_privs. Run it as an unprivileged user (--user):
    /// a root skill could move itself out of its cgroup.
    Exec {
        /// The skill, as declared in the policy.
        #[arg(long)]
        skill: String,
        /// Run the command as this user (name or uid), with that user's primary group.
        #[arg(long)]
        user: Option<String>,
        /// Pass this inherited descriptor (besides 0, 1 and 2) to the skill; repeatable. Others
        /// are closed, and a network socket is never passed.
        #[arg(long = "keep-fd", value_name = "FD")]
        keep_fds: Vec<i32>,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Remove enforcement: unpin the eBPF links and maps, giving skills direct network access.
    Detach,
    /// List recorded sessions, newest first; `sessions export` streams events as JSON lines.
    #[command(args_conflicts_with_subcommands = true)]
    Sessions {
        #[command(subcommand)]
        export: Option<SessionsCommand>,
        #[arg(long)]
        skill: Option<String>,
        /// Only sessions started within this long: 90s, 30m, 1h, 2d.
        #[arg(long)]
        since: Option<String>,
        /// Only sessions that ended so: closed, denied, error, "backend unreachable", ...
        #[arg(long)]
        outcome: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one session and its events in order, with timing and decisions.
    Replay {
        id: i64,
        /// Print the events as fast as they happened (text output).
        #[arg(long, conflicts_with = "json")]
        pace: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the session store's hash chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// List the operations held for approval.
    Approvals {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let a held operation go ahead (recorded with your uid): exactly the one held, the
    /// statement or request line and body whose SHA-256 `approvals` shows.
    Approve {
        id: u64,
        #[arg(long, default_value = "")]
        reason: String,
        /// Also let the same skill repeat this exact operation (the same bytes: statement, or
        /// request line and body) on the same backend for this long without asking
        /// (just-in-time access): 90s, 30m, 1h.
        #[arg(long = "for", value_name = "DURATION")]
        grant_for: Option<String>,
        /// With --for: let through any operation of the same shape instead, i.e. the same text
        /// once the values detectors find (emails, card numbers, ...) are masked, so those
        /// values may differ. The command prints the shape it granted.
        #[arg(long, requires = "grant_for")]
        shape: bool,
        /// Approve an operation `approvals` showed cut (longer than 4096 bytes, or with a body
        /// longer than that): without this flag such an approval is refused, since you could
        /// not see all of what would run. Compare its length and SHA-256 with what you expect.
        #[arg(long)]
        seen_truncated: bool,
    },
    /// List the active time-bounded grants.
    Grants {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a grant before it expires.
    Revoke { id: u64 },
    /// Refuse a held operation (recorded with your uid and the reason).
    Deny {
        id: u64,
        #[arg(long)]
        reason: String,
    },
    /// Is enforcement on? Attached programs, open layers, proxy and DNS listeners, policy.
    /// Works with the agent stopped.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Exit non-zero unless enforcement is on the skills cgroup (agent serving, or
        /// stopped with enforcement pinned): the gate skills.slice waits for.
        #[arg(long)]
        require_enforcement: bool,
        /// Exit non-zero if a process in the skills cgroup is not confined (no seccomp
        /// filter, no no_new_privs, or a forbidden capability in its bounding set), as a
        /// process put there other than by `skillgate exec` is.
        #[arg(long)]
        require_confinement: bool,
    },
    /// Check a policy file, explain what it decides for a request, or write and review one
    /// from what skills did (suggest, test, unused).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Show what the eBPF programs did: connections redirected and attempts refused, by kind,
    /// in total and per skill. Reads the pinned maps, so it works with the agent stopped too.
    Stats {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a completion script for SHELL to standard output, e.g.
    /// `skillgate completions bash > /usr/share/bash-completion/completions/skillgate`
    /// (the Debian package installs those for bash, zsh and fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// Every recorded event with its session's facts, one JSON object per line, oldest first
    /// (for shipping to a central log pipeline).
    Export {
        /// Only events within this long: 90s, 30m, 1h, 2d.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the chain of recorded events and report the first broken link.
    Verify,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process, never moved around"
)]
enum PolicyCommand {
    /// Suggest the smallest rules that would have allowed what SKILL did (observe-mode
    /// decisions and denials count), as policy TOML with counts, first and last use and an
    /// example of each. HTTP path segments that vary (numbers, UUIDs, hashes, long generated
    /// ids) become `*`. What a deny rule forbids is listed apart, never suggested.
    Suggest {
        #[arg(long)]
        skill: String,
        /// How far back: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Only this backend's operations.
        #[arg(long)]
        backend: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Decide every recorded operation again with CANDIDATE and report those whose decision
    /// would change; exit non-zero if any would be denied (a gate for policy changes in CI).
    Test {
        candidate: PathBuf,
        /// How far back: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Only this skill's operations.
        #[arg(long)]
        skill: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rules of the policy in force that decided nothing in the window, and rules far
    /// broader than their use (a `*` grant used on one table, path or name).
    Unused {
        /// How far back: 90s, 30m, 1h, 30d.
        #[arg(long, default_value = "30d")]
        since: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a policy file: every error with its file:line:column; exit non-zero if any.
    Check {
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the decision for one SQL string, HTTP or S3 request, MCP call or DNS query, the
    /// deciding rule and, for SQL, the classification.
    Explain {
        file: PathBuf,
        #[arg(long)]
        skill: String,
        /// The backend of the `--sql`, `--http`, `--s3` or `--mcp` request.
        #[arg(long, required_unless_present = "dns")]
        backend: Option<String>,
        /// Groups a token would grant (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A SQL string (PostgreSQL backends).
        #[arg(long, conflicts_with_all = ["http", "s3", "mcp"])]
        sql: Option<String>,
        /// An HTTP request line without the version: "METHOD /path?query".
        #[arg(long, conflicts_with_all = ["s3", "mcp"])]
        http: Option<String>,
        /// An S3 request, path-style: "METHOD /bucket/key?query" (s3 backends).
        #[arg(long, conflicts_with = "mcp")]
        s3: Option<String>,
        /// An MCP call (mcp backends): "METHOD [NAME|URI] [JSON]", e.g.
        /// 'tools/call create_refund {"amount": 50}', "resources/read file:///docs/a.md",
        /// "tools/list".
        #[arg(long)]
        mcp: Option<String>,
        /// With `--mcp`: decide the tool call as if the tool's fingerprint had changed since it
        /// was pinned (what `mcp_tool_changed` makes of it).
        #[arg(long, requires = "mcp")]
        tool_changed: bool,
        /// A request header of the `--http` or `--s3` request, "Name: value" (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// A file holding the `--s3` request's body (a DeleteObjects' XML).
        #[arg(long = "body-file", requires = "s3")]
        body_file: Option<PathBuf>,
        /// A DNS query the skill would send: "NAME" (an A query) or "NAME TYPE".
        #[arg(long, conflicts_with_all = ["sql", "http", "s3", "mcp", "backend"])]
        dns: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command.run(&cli.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: what went wrong and, where we know it, the fix.
            eprintln!("skillgate: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    fn run(self, config: &Path) -> anyhow::Result<()> {
        match self {
            Command::Run => daemon::run::run(config),
            Command::Exec {
                skill,
                user,
                keep_fds,
                command,
            } => cli::exec::exec(config, &skill, user.as_deref(), &keep_fds, &command),
            Command::Detach => daemon::run::detach(config),
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut <Cli as clap::CommandFactory>::command(),
                    "skillgate",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
            Command::Stats { json } => cli::stats::stats(config, json),
            Command::Status {
                json,
                require_enforcement,
                require_confinement,
            } => cli::status::status(config, json, require_enforcement, require_confinement),
            Command::Approvals { json } => cli::approvals::list(config, json),
            Command::Approve {
                id,
                reason,
                grant_for,
                shape,
                seen_truncated,
            } => cli::approvals::approve(
                config,
                cli::approvals::ApproveArgs {
                    id,
                    reason,
                    grant_for: grant_for.as_deref(),
                    shape,
                    seen_truncated,
                },
            ),
            Command::Grants { json } => cli::approvals::grants(config, json),
            Command::Revoke { id } => cli::approvals::revoke(config, id),
            Command::Deny { id, reason } => cli::approvals::deny(config, id, reason),
            Command::Sessions {
                export: Some(SessionsCommand::Export { since }),
                ..
            } => cli::sessions::export(config, since.as_deref()),
            Command::Sessions {
                export: None,
                skill,
                since,
                outcome,
                limit,
                json,
            } => cli::sessions::sessions(
                config,
                &cli::sessions::SessionsArgs {
                    skill: skill.as_deref(),
                    since: since.as_deref(),
                    outcome: outcome.as_deref(),
                    limit,
                    json,
                },
            ),
            Command::Replay { id, pace, json } => cli::sessions::replay(config, id, json, pace),
            Command::Audit(AuditCommand::Verify) => cli::sessions::audit_verify(config),
            Command::Policy(command) => command.run(config),
        }
    }
}

impl PolicyCommand {
    fn run(self, config: &Path) -> anyhow::Result<()> {
        match self {
            PolicyCommand::Suggest {
                skill,
                since,
                backend,
                json,
            } => cli::suggest::suggest(
                config,
                &cli::suggest::SuggestArgs {
                    skill: &skill,
                    since: &since,
                    backend: backend.as_deref(),
                    json,
                },
            ),
            PolicyCommand::Test {
                candidate,
                since,
                skill,
                json,
            } => cli::review::test(
                config,
                &cli::review::TestArgs {
                    candidate: &candidate,
                    since: &since,
                    skill: skill.as_deref(),
                    json,
                },
            ),
            PolicyCommand::Unused { since, json } => cli::review::unused(config, &since, json),
            PolicyCommand::Check { file, json } => cli::policy::check(&file, json),
            PolicyCommand::Explain {
                file,
                skill,
                backend,
                groups,
                sql,
                http,
                s3,
                mcp,
                tool_changed,
                headers,
                body_file,
                dns,
                json,
            } => cli::policy::explain(
                &file,
                &cli::policy::ExplainArgs {
                    skill: &skill,
                    backend: backend.as_deref().unwrap_or_default(),
                    groups: &groups,
                    sql: sql.as_deref(),
                    http: http.as_deref(),
                    s3: s3.as_deref(),
                    mcp: mcp.as_deref(),
                    tool_changed,
                    headers: &headers,
                    body_file: body_file.as_deref(),
                    dns: dns.as_deref(),
                    json,
                },
            ),
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // aya warns, at length, that the kernel refuses the object's BTF (bpf-linker 0.10 emits a
    // type name the kernel rejects); the programs need no BTF, so that warning is noise.
    let filter = EnvFilter::try_from_env("SKILLGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,aya::bpf=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).finish().init(),
    }
}
