//! Names: the DNS names backends are dialed by, the `dns` rules that let a skill resolve other
//! names, and the decision on each query a skill sends.
//!
//! A skill may resolve the names of the backends it may reach (their `dial` names) and the
//! names a `dns` rule allows it; a matching `dns` deny rule wins over both. Everything else is
//! refused and never reaches a resolver: a name is also a channel out of the host.
//! Only address queries (`A`, `AAAA`, and the `CNAME` chains that lead to them) are answered
//! for those names; another record type needs a `dns` rule that lists it in `dns_types`.

use std::fmt;

use crate::decide::{Decision, Effect, RuleRef};
use crate::model::{Mode, Policy, Rule, RuleOp};

/// Record types a name's grant covers without a rule listing them.
pub const ADDRESS_TYPES: [&str; 3] = ["A", "AAAA", "CNAME"];

/// Record types a `dns_types` list may name: what applications look up by name.
pub const KNOWN_TYPES: [&str; 13] = [
    "A", "AAAA", "CNAME", "SRV", "TXT", "MX", "HTTPS", "SVCB", "PTR", "NS", "SOA", "CAA", "NAPTR",
];

/// `name` as patterns match it: lower case, no trailing dot. `None` for what no pattern may
/// match: the root, an empty label, or a label with anything but letters, digits, `-` and `_`
/// (a label may hold any byte on the wire; such names only ever reach a resolver by a rule
/// for `*`, which patterns cannot express).
pub fn normalize(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| name.to_ascii_lowercase())
}

/// A name pattern: `orders.internal`, or `*.mirror.internal` (every name below
/// `mirror.internal`, at any depth, but not `mirror.internal` itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamePattern {
    /// The name, or the suffix below which a wildcard matches (normalized).
    name: String,
    wildcard: bool,
}

impl NamePattern {
    /// Parses a pattern; `None` when it is not a host name or `*.` and one.
    pub fn parse(text: &str) -> Option<Self> {
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if rest
            .strip_suffix('.')
            .unwrap_or(rest)
            .parse::<std::net::IpAddr>()
            .is_ok()
            || rest.contains('*')
        {
            return None;
        }
        let name = normalize(rest)?;
        Some(Self { name, wildcard })
    }

    /// The single name it matches, unless it is a wildcard.
    pub fn exact(&self) -> Option<&str> {
        (!self.wildcard).then_some(self.name.as_str())
    }

    /// Whether `name` (normalized, see [`normalize`]) matches.
    pub fn matches(&self, name: &str) -> bool {
        if self.wildcard {
            name.strip_suffix(self.name.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
        } else {
            name == self.name
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

/// A backend's `dial` entry by name: the names skills resolve, and the port they dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialName {
    pub pattern: NamePattern,
    pub port: u16,
}

impl fmt::Display for DialName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.pattern, self.port)
    }
}

/// A `dns` rule: names a skill may (or may not) resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRule {
    pub id: usize,
    pub name: String,
    pub line: usize,
    /// Indexes into [`Policy::skills`].
    pub skills: Vec<usize>,
    pub groups: Vec<String>,
    /// `Allow` or `Deny`.
    pub effect: Effect,
    pub mode: Mode,
    pub names: Vec<NamePattern>,
    /// Record types beyond [`ADDRESS_TYPES`] the rule covers (upper case).
    pub types: Vec<String>,
}

/// A query a skill sent.
#[derive(Debug, Clone, Copy)]
pub struct DnsRequest<'a> {
    pub skill: &'a str,
    /// The name asked for, as the query carries it (see [`normalize`]).
    pub name: &'a str,
    /// The record type's mnemonic (`A`, `AAAA`, `TXT`, `TYPE65534`).
    pub record_type: &'a str,
}

/// What grants or refuses a name, before modes are applied.
struct Found<'p> {
    effect: Effect,
    rules: Vec<&'p DnsRule>,
    backend: Option<usize>,
    reason: String,
}

impl Policy {
    /// Decides a DNS query. Never fails: anything unknown is denied, with the reason.
    pub fn decide_dns(&self, request: &DnsRequest<'_>) -> Decision<'_> {
        let Some(skill) = self.skill_index(request.skill) else {
            return Decision::deny(
                None,
                None,
                format!("`{}` is not a declared skill", request.skill),
            );
        };
        let skill_def = &self.skills[skill];
        let Some(name) = normalize(request.name) else {
            return Decision::deny(
                Some(skill_def),
                None,
                format!(
                    "`{}` is not a host name (letters, digits, `-`, `_` and dots)",
                    request.name.escape_debug()
                ),
            );
        };
        let rules: Vec<&DnsRule> = self
            .dns_rules
            .iter()
            .filter(|r| {
                r.skills.contains(&skill) || skill_def.groups.iter().any(|g| r.groups.contains(g))
            })
            .collect();
        let observing = self.mode == Mode::Observe || rules.iter().any(|r| r.mode == Mode::Observe);
        let enforced: Vec<&DnsRule> = rules
            .iter()
            .copied()
            .filter(|r| r.mode == Mode::Enforce && self.mode == Mode::Enforce)
            .collect();
        let found = self.find_dns(skill, &name, request.record_type, &enforced, false);
        let mut decision = self.dns_decision(skill, found);
        if !observing {
            return decision;
        }
        let all = self.dns_decision(
            skill,
            self.find_dns(skill, &name, request.record_type, &rules, true),
        );
        if self.mode == Mode::Observe {
            decision = Decision {
                effect: Effect::Allow,
                reason: format!(
                    "observe mode (would be {}: {})",
                    all.effect.as_str(),
                    all.reason
                ),
                observed: Some(all.effect),
                ..all
            };
        } else if all.effect != decision.effect {
            decision.observed = Some(all.effect);
        }
        decision
    }

    fn dns_decision<'p>(&'p self, skill: usize, found: Found<'p>) -> Decision<'p> {
        Decision {
            effect: found.effect,
            skill: Some(&self.skills[skill]),
            backend: found.backend.map(|b| &self.backends[b]),
            rule: found.rules.first().map(|r| r.name.as_str()),
            rules: found
                .rules
                .iter()
                .map(|r| RuleRef {
                    id: r.id,
                    name: &r.name,
                    location: format!("{}:{}", self.origin, r.line),
                })
                .collect(),
            mask: Default::default(),
            reason: found.reason,
            observed: None,
            exact_only: false,
        }
    }

    /// What decides `name` for `skill` under `rules`; `observing`: backends' observe-only
    /// rules count too.
    fn find_dns<'p>(
        &'p self,
        skill: usize,
        name: &str,
        record_type: &str,
        rules: &[&'p DnsRule],
        observing: bool,
    ) -> Found<'p> {
        let skill_name = &self.skills[skill].name;
        let address = ADDRESS_TYPES.contains(&record_type);
        let covering: Vec<&DnsRule> = rules
            .iter()
            .copied()
            .filter(|r| r.names.iter().any(|p| p.matches(name)))
            .filter(|r| {
                r.effect == Effect::Deny || address || r.types.iter().any(|t| t == record_type)
            })
            .collect();
        if let Some(deny) = covering.iter().find(|r| r.effect == Effect::Deny) {
            return Found {
                effect: Effect::Deny,
                rules: vec![deny],
                backend: None,
                reason: format!(
                    "{} denies skill `{skill_name}` resolving `{name}`",
                    deny.name
                ),
            };
        }
        if let Some(allow) = covering.first() {
            return Found {
                effect: Effect::Allow,
                rules: vec![allow],
                backend: None,
                reason: format!(
                    "{} lets skill `{skill_name}` resolve `{name}` ({record_type})",
                    allow.name
                ),
            };
        }
        let reachable = address
            .then(|| {
                self.backends_named(name)
                    .into_iter()
                    .find(|&b| self.may_reach(skill, b, observing))
            })
            .flatten();
        match reachable {
            Some(backend) => Found {
                effect: Effect::Allow,
                rules: Vec::new(),
                backend: Some(backend),
                reason: format!(
                    "`{name}` names backend `{}`, which skill `{skill_name}` may reach",
                    self.backends[backend].name
                ),
            },
            None if !address && !self.backends_named(name).is_empty() => Found {
                effect: Effect::Deny,
                rules: Vec::new(),
                backend: None,
                reason: format!(
                    "{record_type} queries need a `dns` rule listing the type in `dns_types`; \
                     backend names are granted address queries (A, AAAA, CNAME) only"
                ),
            },
            None => Found {
                effect: Effect::Deny,
                rules: Vec::new(),
                backend: None,
                reason: format!(
                    "`{name}` is not the name of a backend skill `{skill_name}` may reach, and \
                     no `dns` rule lets it resolve the name"
                ),
            },
        }
    }

    /// Whether a connection of the skill in `cgroup` to `port`, by the names it resolved to
    /// the address, needs its server name (TLS SNI, HTTP Host) to tell backends apart.
    pub fn needs_server_name(&self, cgroup: Option<&str>, names: &[String], port: u16) -> bool {
        let skill = cgroup.and_then(|c| self.skill_index_for_cgroup(c));
        self.backend_by_names(skill, names, port, None).is_err()
    }

    /// Backends with a `dial` name that matches `name` (normalized), in file order.
    pub fn backends_named(&self, name: &str) -> Vec<usize> {
        self.backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.dial_names.iter().any(|d| d.pattern.matches(name)))
            .map(|(i, _)| i)
            .collect()
    }

    /// Backends a connection to `port` reaches by one of `names` (normalized names the skill
    /// resolved to the address it dialed), in file order.
    pub fn backends_dialed_by_name(&self, names: &[String], port: u16) -> Vec<usize> {
        self.backends
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                b.dial_names
                    .iter()
                    .any(|d| d.port == port && names.iter().any(|n| d.pattern.matches(n)))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether some rule lets `skill` (by itself or its own groups) use `backend` and none
    /// denies it the backend outright; observe-only rules count when `observing`.
    pub(crate) fn may_reach(&self, skill: usize, backend: usize, observing: bool) -> bool {
        let counted: Vec<&Rule> = self
            .candidates(skill, &[], backend)
            .iter()
            .map(|&i| &self.rules[i])
            .filter(|r| observing || (r.mode == Mode::Enforce && self.mode == Mode::Enforce))
            .collect();
        counted.iter().any(|r| r.effect != Effect::Deny)
            && !counted
                .iter()
                .any(|r| r.effect == Effect::Deny && matches!(r.op, RuleOp::Any))
    }
}

impl Policy {
    /// The backend a connection to `port` reaches through `names`, the names the skill
    /// resolved to the address it dialed: `Ok(None)` when no backend is dialed by one of them
    /// (literal addresses decide then). Names of several backends on one address lead to the
    /// one the skill may reach, or else to the one `server_name` (the connection's SNI or
    /// Host) names; `Err` (why) when that still leaves more than one.
    pub(crate) fn backend_by_names(
        &self,
        skill: Option<usize>,
        names: &[String],
        port: u16,
        server_name: Option<&str>,
    ) -> Result<Option<usize>, String> {
        if names.is_empty() {
            return Ok(None);
        }
        let named = self.backends_dialed_by_name(names, port);
        if named.len() <= 1 {
            return Ok(named.first().copied());
        }
        let reachable: Vec<usize> = named
            .iter()
            .copied()
            .filter(|&b| skill.is_some_and(|s| self.may_reach(s, b, true)))
            .collect();
        let server = server_name.and_then(normalize);
        let by_server: Vec<usize> = reachable
            .iter()
            .copied()
            .filter(|&b| {
                server.as_ref().is_some_and(|server| {
                    names.contains(server)
                        && self.backends[b]
                            .dial_names
                            .iter()
                            .any(|d| d.port == port && d.pattern.matches(server))
                })
            })
            .collect();
        if let [one] = by_server.as_slice() {
            return Ok(Some(*one));
        }
        match reachable.as_slice() {
            [] => Ok(Some(named[0])),
            [one] => Ok(Some(*one)),
            many => Err(format!(
                "the address was resolved from names of backends `{}`, which the skill may all \
                 reach, and no TLS server name or HTTP Host of the connection names one of them: \
                 which one it dialed is ambiguous",
                many.iter()
                    .map(|&b| self.backends[b].name.as_str())
                    .collect::<Vec<_>>()
                    .join("`, `")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::decide::ConnectRequest;

    const POLICY: &str = r#"
[[skill]]
name = "reporter"
[[skill]]
name = "other"

[[backend]]
name = "orders"
protocol = "tcp"
dial = ["orders.internal:8080", "10.0.0.9:8080"]
upstream = "127.0.0.1:18080"

[[backend]]
name = "billing"
protocol = "tcp"
dial = ["*.billing.internal:443"]
upstream = "127.0.0.1:18443"

[[rule]]
skills = ["reporter"]
backend = "orders"
effect = "allow"

[[rule]]
skills = ["reporter", "other"]
backend = "billing"
effect = "allow"

[[rule]]
name = "mirror"
skills = ["reporter"]
dns = ["*.pypi-mirror.internal", "time.internal"]
dns_types = ["srv"]
effect = "allow"

[[rule]]
name = "no-exfil"
skills = ["reporter"]
dns = ["*.evil.pypi-mirror.internal"]
effect = "deny"
"#;

    fn policy() -> Policy {
        Policy::parse("policy.toml", POLICY).unwrap()
    }

    fn dns(policy: &Policy, skill: &str, name: &str, record_type: &str) -> Effect {
        policy
            .decide_dns(&DnsRequest {
                skill,
                name,
                record_type,
            })
            .effect
    }

    #[test]
    fn patterns_match_names_and_names_below() {
        let exact = NamePattern::parse("Orders.Internal.").unwrap();
        assert!(exact.matches("orders.internal"));
        assert!(!exact.matches("x.orders.internal"));
        let wild = NamePattern::parse("*.internal").unwrap();
        assert!(wild.matches("a.internal") && wild.matches("a.b.internal"));
        assert!(!wild.matches("internal") && !wild.matches("xinternal"));
        for bad in [
            "10.0.0.1",
            "*",
            "a.*.b",
            "",
            "a..b",
            "a b",
            "*.",
            "exa\u{e9}mple.org",
        ] {
            assert!(NamePattern::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(normalize("A.B."), Some("a.b".to_owned()));
        assert_eq!(normalize("a\\.b.c"), None);
        assert_eq!(normalize("."), None);
    }

    #[test]
    fn a_skill_resolves_its_backends_names_and_what_dns_rules_allow() {
        let policy = policy();
        assert_eq!(
            dns(&policy, "reporter", "orders.internal", "A"),
            Effect::Allow
        );
        assert_eq!(
            dns(&policy, "reporter", "ORDERS.internal.", "AAAA"),
            Effect::Allow
        );
        // `other` may not reach `orders`, so it may not resolve its name either.
        assert_eq!(dns(&policy, "other", "orders.internal", "A"), Effect::Deny);
        assert_eq!(
            dns(&policy, "other", "eu.billing.internal", "A"),
            Effect::Allow
        );
        assert_eq!(dns(&policy, "other", "billing.internal", "A"), Effect::Deny);
        assert_eq!(
            dns(&policy, "reporter", "files.pypi-mirror.internal", "A"),
            Effect::Allow
        );
        assert_eq!(
            dns(&policy, "reporter", "files.pypi-mirror.internal", "SRV"),
            Effect::Allow
        );
        assert_eq!(
            dns(&policy, "reporter", "files.pypi-mirror.internal", "TXT"),
            Effect::Deny
        );
        assert_eq!(
            dns(&policy, "reporter", "orders.internal", "TXT"),
            Effect::Deny
        );
        let denied = policy.decide_dns(&DnsRequest {
            skill: "reporter",
            name: "x.evil.pypi-mirror.internal",
            record_type: "A",
        });
        assert_eq!(
            (denied.effect, denied.rule),
            (Effect::Deny, Some("no-exfil"))
        );
        let undeclared = policy.decide_dns(&DnsRequest {
            skill: "reporter",
            name: "c2VjcmV0.attacker.example",
            record_type: "A",
        });
        assert_eq!(undeclared.effect, Effect::Deny);
        assert!(
            undeclared.reason.contains("no `dns` rule"),
            "{}",
            undeclared.reason
        );
        assert_eq!(dns(&policy, "nobody", "orders.internal", "A"), Effect::Deny);
        assert_eq!(
            dns(&policy, "reporter", "a\\000b.internal", "A"),
            Effect::Deny
        );
    }

    #[test]
    fn observe_mode_allows_and_says_what_it_would_decide() {
        let text = format!("mode = \"observe\"\n{POLICY}");
        let policy = Policy::parse("policy.toml", &text).unwrap();
        let decision = policy.decide_dns(&DnsRequest {
            skill: "reporter",
            name: "leak.example",
            record_type: "A",
        });
        assert_eq!(decision.effect, Effect::Allow);
        assert_eq!(decision.observed, Some(Effect::Deny));
        assert_eq!(
            dns(&policy, "reporter", "orders.internal", "A"),
            Effect::Allow
        );
    }

    #[test]
    fn a_connection_reaches_a_backend_by_the_names_resolved_to_its_address() {
        let policy = policy();
        let connect = |names: &[String], to: &str| {
            let destination: SocketAddr = to.parse().unwrap();
            let decision = policy.decide_connect(&ConnectRequest {
                cgroup: Some("reporter"),
                destination,
                names,
                server_name: None,
            });
            (decision.effect, decision.backend.map(|b| b.name.clone()))
        };
        let orders = ["orders.internal".to_owned()];
        let allowed = (Effect::Allow, Some("orders".to_owned()));
        assert_eq!(connect(&orders, "10.1.2.3:8080"), allowed);
        // Not resolved through the agent: only the literal address is declared.
        assert_eq!(connect(&[], "10.1.2.3:8080").0, Effect::Deny);
        assert_eq!(connect(&[], "10.0.0.9:8080"), allowed);
        // The name's port is part of the grant.
        assert_eq!(connect(&orders, "10.1.2.3:9999").0, Effect::Deny);
        let both = [
            "orders.internal".to_owned(),
            "eu.billing.internal".to_owned(),
        ];
        assert_eq!(connect(&both, "10.1.2.3:443").1.as_deref(), Some("billing"));
    }

    #[test]
    fn names_of_two_reachable_backends_on_one_address_are_refused() {
        let text = POLICY.replace(
            "dial = [\"*.billing.internal:443\"]",
            "dial = [\"*.billing.internal:8080\"]",
        );
        let policy = Policy::parse("policy.toml", &text).unwrap();
        let names = [
            "orders.internal".to_owned(),
            "eu.billing.internal".to_owned(),
        ];
        let decision = policy.decide_connect(&ConnectRequest {
            cgroup: Some("reporter"),
            destination: "10.1.2.3:8080".parse().unwrap(),
            names: &names,
            server_name: None,
        });
        assert_eq!(decision.effect, Effect::Deny);
        assert!(decision.reason.contains("ambiguous"), "{}", decision.reason);
        // The connection's server name tells them apart, if the skill resolved that name here.
        for (server, expected) in [
            ("EU.billing.internal", Some("billing")),
            ("orders.internal.", Some("orders")),
            ("x.billing.internal", None),
        ] {
            let decision = policy.decide_connect(&ConnectRequest {
                cgroup: Some("reporter"),
                destination: "10.1.2.3:8080".parse().unwrap(),
                names: &names,
                server_name: Some(server),
            });
            assert_eq!(
                decision.backend.map(|b| b.name.as_str()),
                expected,
                "{server}"
            );
        }
        assert!(policy.needs_server_name(Some("reporter"), &names, 8080));
        assert!(!policy.needs_server_name(Some("other"), &names, 8080));
        // `other` reaches only billing: no ambiguity for it.
        let decision = policy.decide_connect(&ConnectRequest {
            cgroup: Some("other"),
            destination: "10.1.2.3:8080".parse().unwrap(),
            names: &names,
            server_name: None,
        });
        assert_eq!(decision.backend.map(|b| b.name.as_str()), Some("billing"));
    }

    #[test]
    fn dns_rules_before_backend_rules_leave_every_grant_with_its_own_rule() {
        // Found by review: rules were indexed by id (file position), which a `dns` rule
        // earlier in the file shifted: another skill's grant applied, or the lookup panicked.
        let text = r#"
[[skill]]
name = "x"
[[skill]]
name = "y"
[[backend]]
name = "admin"
protocol = "http"
dial = ["127.0.0.2:80"]
upstream = "127.0.0.1:80"
[[backend]]
name = "api"
protocol = "http"
dial = ["127.0.0.3:80"]
upstream = "127.0.0.1:81"
[[rule]]
skills = ["y"]
dns = ["a.internal"]
effect = "allow"
[[rule]]
name = "x-status"
skills = ["x"]
backend = "admin"
effect = "allow"
http = { methods = ["GET"], paths = ["/status"] }
[[rule]]
name = "y-api-everything"
skills = ["y"]
backend = "api"
effect = "allow"
http = { methods = ["*"], paths = ["/**"] }
"#;
        let policy = Policy::parse("policy.toml", text).unwrap();
        let http = |skill, backend, method, target| {
            let answer = policy.decide_http(skill, &[], backend, method, target, &[]);
            (
                answer.decision.effect,
                answer.decision.rule.map(str::to_owned),
            )
        };
        assert_eq!(http("x", "admin", "DELETE", "/users/1").0, Effect::Deny);
        assert_eq!(
            http("x", "admin", "GET", "/status"),
            (Effect::Allow, Some("x-status".to_owned()))
        );
        assert_eq!(
            http("y", "api", "DELETE", "/users/1"),
            (Effect::Allow, Some("y-api-everything".to_owned()))
        );
        assert_eq!(dns(&policy, "y", "a.internal", "A"), Effect::Allow);
        assert_eq!(dns(&policy, "x", "a.internal", "A"), Effect::Deny);
    }

    #[test]
    fn an_upstream_may_be_a_host_name_but_not_a_pattern() {
        let text = POLICY.replace(
            "upstream = \"127.0.0.1:18080\"",
            "upstream = \"DB.internal:5432\"",
        );
        let policy = Policy::parse("policy.toml", &text).unwrap();
        let upstream = &policy.backend("orders").unwrap().upstream;
        let named = crate::model::Upstream::Name {
            host: "db.internal".to_owned(),
            port: 5432,
        };
        assert_eq!(
            (upstream, upstream.host().as_str()),
            (&named, "db.internal")
        );
        let text = POLICY.replace(
            "upstream = \"127.0.0.1:18080\"",
            "upstream = \"*.internal:5432\"",
        );
        let err = Policy::parse("policy.toml", &text).unwrap_err().to_string();
        assert!(
            err.contains("`upstream` address `*.internal:5432`"),
            "{err}"
        );
    }

    #[test]
    fn dns_rules_are_checked_with_file_and_line() {
        let cases = [
            (
                "dns = [\"10.0.0.1\"]\neffect = \"allow\"",
                "not a host name",
            ),
            (
                "dns = [\"a.internal\"]\neffect = \"approve\"",
                "allows or denies",
            ),
            (
                "dns = [\"a.internal\"]\ndns_types = [\"AXFR\"]\neffect = \"allow\"",
                "not a record type",
            ),
            ("dns = []\neffect = \"allow\"", "lists no names"),
            ("effect = \"allow\"", "needs a `backend`"),
            (
                "dns = [\"a.internal\"]\nbackend = \"orders\"\neffect = \"allow\"",
                "drop `backend`",
            ),
        ];
        for (rule, expected) in cases {
            let text = format!("{POLICY}\n[[rule]]\nskills = [\"other\"]\n{rule}\n");
            let err = Policy::parse("policy.toml", &text).unwrap_err().to_string();
            assert!(
                err.contains(expected) && err.contains("policy.toml:"),
                "{rule}: {err}"
            );
        }
        let twice = POLICY.replace(
            "\"10.0.0.9:8080\"]",
            "\"10.0.0.9:8080\", \"ORDERS.internal:8080\"]",
        );
        let err = Policy::parse("policy.toml", &twice)
            .unwrap_err()
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
    }
}
