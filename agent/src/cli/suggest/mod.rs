//! `skillgate policy suggest`: the smallest set of rules that would have allowed what a skill
//! did (observe-mode decisions and denials both count), as policy TOML that `policy check`
//! accepts, commented with counts, first and last use and an example of each.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use skillgate_policy::{Mode, Policy, dns::normalize, http::PathPattern};

mod render;

use crate::cli::observed::{Asked, forbidding_rule, path_template};
use crate::cli::sessions::timestamp;
use crate::config::{Config, parse_duration};
use crate::record::{self, query};

pub struct SuggestArgs<'a> {
    pub skill: &'a str,
    pub since: &'a str,
    pub backend: Option<&'a str>,
    pub json: bool,
}

/// What one suggested grant covers, by what the skill did.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Grant {
    /// A kind on an object (`None`: kinds with no object, such as `transaction`).
    Sql {
        backend: String,
        object: Option<String>,
        kind: String,
    },
    Http {
        backend: String,
        path: String,
        method: String,
    },
    Dns {
        name: String,
        record_type: String,
    },
    Connect {
        backend: String,
    },
}

/// How often, when first and last, and one example.
#[derive(Debug, Clone)]
struct Use {
    count: u64,
    first_ns: i64,
    last_ns: i64,
    example: String,
}

#[derive(Default)]
struct Seen {
    operations: u64,
    grants: BTreeMap<Grant, Use>,
    /// Operations a deny rule of the policy in force forbids: (operation, rule) → use.
    forbidden: BTreeMap<(String, String), Use>,
    /// Operations no rule could be written for (unparsed statements, odd paths).
    unclassified: BTreeMap<String, Use>,
    /// The deny rule forbidding each distinct operation (decided once each).
    forbidding: HashMap<(String, Asked), Option<String>>,
}

fn note(into: &mut Use, row: &query::OperationRow) {
    into.count += 1;
    into.first_ns = into.first_ns.min(row.at_ns);
    into.last_ns = into.last_ns.max(row.at_ns);
}

fn first_use(row: &query::OperationRow) -> Use {
    Use {
        count: 0,
        first_ns: row.at_ns,
        last_ns: row.at_ns,
        example: one_line(&row.operation),
    }
}

impl Seen {
    fn add(&mut self, row: &query::OperationRow, policy: &Policy, skill: &str) {
        let Some(asked) = Asked::of(row, policy) else {
            return;
        };
        self.operations += 1;
        let backend = row.backend.clone().unwrap_or_default();
        let forbidding = self
            .forbidding
            .entry((backend.clone(), asked.clone()))
            .or_insert_with(|| {
                let decision = asked.decide(policy, skill, &backend)?;
                forbidding_rule(policy, &decision)
            });
        if let Some(rule) = forbidding.clone() {
            let entry = self.forbidden.entry((one_line(&row.operation), rule));
            return note(entry.or_insert_with(|| first_use(row)), row);
        }
        let grants = grants(&asked, row, policy, backend);
        if grants.is_empty() {
            let entry = self.unclassified.entry(one_line(&row.operation));
            return note(entry.or_insert_with(|| first_use(row)), row);
        }
        for grant in grants {
            note(
                self.grants.entry(grant).or_insert_with(|| first_use(row)),
                row,
            );
        }
    }
}

/// The grants that would let `asked` through.
fn grants(
    asked: &Asked,
    row: &query::OperationRow,
    policy: &Policy,
    backend: String,
) -> Vec<Grant> {
    match asked {
        Asked::Sql(_) => {
            let classification = row.classification.as_deref().unwrap_or("unparsed");
            if classification == "unparsed" {
                return Vec::new();
            }
            classification
                .split(", ")
                .map(|access| {
                    let (kind, object) = match access.split_once(' ') {
                        Some((kind, object)) => (kind, Some(object.to_owned())),
                        None => (access, None),
                    };
                    Grant::Sql {
                        backend: backend.clone(),
                        object,
                        kind: kind.to_owned(),
                    }
                })
                .collect()
        }
        Asked::Http(method, target) => {
            let path = path_template(target);
            if PathPattern::parse(&path).is_err() {
                return Vec::new();
            }
            vec![Grant::Http {
                backend,
                path,
                method: method.clone(),
            }]
        }
        Asked::Dns(record_type, name) => {
            let Some(name) = normalize(name) else {
                return Vec::new();
            };
            // Names of backends are resolvable with the backend's grant.
            if !policy.backends_named(&name).is_empty() {
                return vec![];
            }
            vec![Grant::Dns {
                name,
                record_type: record_type.clone(),
            }]
        }
        Asked::Connect(_) => vec![Grant::Connect { backend }],
    }
}

pub fn suggest(config_path: &Path, args: &SuggestArgs<'_>) -> Result<()> {
    let config = Config::load(config_path)?;
    if config.policy.skill(args.skill).is_none() {
        bail!(
            "`{}` is not a skill of the policy in force ({})",
            args.skill,
            config.policy_path.display()
        );
    }
    let store = crate::cli::sessions::store(config_path, "skillgate policy suggest")?;
    let since_ns = record::now_ns() - parse_duration(args.since)?;
    // Deny rules count as enforced, observe-only or not: what they would forbid is never
    // suggested.
    let mut enforcing = config.policy.clone();
    enforcing.mode = Mode::Enforce;
    enforcing
        .rules
        .iter_mut()
        .for_each(|r| r.mode = Mode::Enforce);
    enforcing
        .dns_rules
        .iter_mut()
        .for_each(|r| r.mode = Mode::Enforce);
    let mut seen = Seen::default();
    query::operations(&store, since_ns, Some(args.skill), |row| {
        if args.backend.is_none() || row.backend.as_deref() == args.backend {
            seen.add(&row, &enforcing, args.skill);
        }
    })?;
    let rules = render::rules_text(&seen, &config.policy, args.skill);
    let base = std::fs::read_to_string(&config.policy_path)
        .with_context(|| format!("cannot read {}", config.policy_path.display()))?;
    let text = format!(
        "# `skillgate policy suggest --skill {skill} --since {since}`: {n} operations of skill \
         `{skill}`.\n# The skills and backends (and the rules of other skills) are the policy \
         in force's;\n# rules granting to `{skill}` alone are replaced by the suggestion below.\n\n{}\n{rules}",
        without_own_rules(&base, args.skill)?,
        skill = args.skill,
        since = args.since,
        n = seen.operations,
    );
    Policy::parse("suggested policy", &text)
        .map_err(|err| anyhow::anyhow!("the suggestion does not check (a bug): {err}"))?;
    if args.json {
        println!("{}", report_json(&seen, args, &text));
    } else {
        print!("{text}");
    }
    Ok(())
}

/// The policy file without the rules that grant to `skill` alone (its deny rules stay).
fn without_own_rules(text: &str, skill: &str) -> Result<String> {
    let mut table: toml::Table = toml::from_str(text).context("cannot read the policy in force")?;
    if let Some(toml::Value::Array(rules)) = table.get_mut("rule") {
        rules.retain(|rule| {
            let only_skill = rule
                .get("skills")
                .and_then(toml::Value::as_array)
                .is_some_and(|s| s.len() == 1 && s[0].as_str() == Some(skill));
            let groups = rule
                .get("groups")
                .and_then(toml::Value::as_array)
                .is_some_and(|g| !g.is_empty());
            let deny = rule.get("effect").and_then(toml::Value::as_str) == Some("deny");
            !only_skill || groups || deny
        });
    }
    // An empty array would be written as `rule = []`, which the suggested `[[rule]]`s clash with.
    if table
        .get("rule")
        .and_then(toml::Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        table.remove("rule");
    }
    toml::to_string(&table).context("cannot write the policy back")
}

fn one_line(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(120) {
        Some((cut, _)) => format!("{}...", &flat[..cut]),
        None => flat,
    }
}

fn report_json(seen: &Seen, args: &SuggestArgs<'_>, text: &str) -> serde_json::Value {
    let uses = |used: &Use| {
        json!({
            "count": used.count,
            "first": timestamp(used.first_ns),
            "last": timestamp(used.last_ns),
            "example": used.example,
        })
    };
    json!({
        "skill": args.skill,
        "since": args.since,
        "operations": seen.operations,
        "grants": seen.grants.iter().map(|(grant, used)| json!({
            "grant": format!("{grant:?}"),
            "use": uses(used),
        })).collect::<Vec<_>>(),
        "forbidden": seen.forbidden.iter().map(|((operation, rule), used)| json!({
            "operation": operation,
            "rule": rule,
            "use": uses(used),
        })).collect::<Vec<_>>(),
        "unclassified": seen.unclassified.iter().map(|(operation, used)| json!({
            "operation": operation,
            "use": uses(used),
        })).collect::<Vec<_>>(),
        "policy": text,
    })
}

#[cfg(test)]
mod tests {
    use super::without_own_rules;

    #[test]
    fn the_skills_own_grants_go_and_its_deny_rules_and_others_stay() {
        let text = "[[skill]]\nname = \"a\"\n[[skill]]\nname = \"b\"\n\
                    [[backend]]\nname = \"x\"\nprotocol = \"tcp\"\ndial = [\"127.0.0.2:1\"]\nupstream = \"127.0.0.1:1\"\n\
                    [[rule]]\nskills = [\"a\"]\nbackend = \"x\"\neffect = \"allow\"\n";
        let kept = without_own_rules(text, "a").unwrap();
        assert!(!kept.contains("rule"), "{kept}");
        // The suggestion's rules append to what is left, which must still parse.
        let suggested =
            format!("{kept}\n[[rule]]\nskills = [\"a\"]\nbackend = \"x\"\neffect = \"allow\"\n");
        skillgate_policy::Policy::parse("p", &suggested).unwrap();
        let mixed = format!(
            "{text}[[rule]]\nskills = [\"a\"]\nbackend = \"x\"\neffect = \"deny\"\n\
             [[rule]]\nskills = [\"a\", \"b\"]\nbackend = \"x\"\neffect = \"allow\"\nname = \"shared\"\n"
        );
        let kept = without_own_rules(&mixed, "a").unwrap();
        assert_eq!(kept.matches("[[rule]]").count(), 2, "{kept}");
    }
}
