//! The suggested rules as policy TOML: one rule per backend and shape of use, each grant
//! commented with its use.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use skillgate_policy::{Policy, Protocol};

use super::{Grant, Seen, Use};
use crate::cli::sessions::timestamp;

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn list(items: &BTreeSet<String>) -> String {
    items
        .iter()
        .map(|i| quoted(i))
        .collect::<Vec<_>>()
        .join(", ")
}

fn comment(what: &str, used: &Use) -> String {
    format!(
        "# {what}: {} times, first {}, last {}, e.g. {}\n",
        used.count,
        timestamp(used.first_ns),
        timestamp(used.last_ns),
        used.example
    )
}

/// The suggested rules, one per backend and shape of use.
pub(super) fn rules_text(seen: &Seen, policy: &Policy, skill: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    let mut rule = |body: String, comments: String| {
        n += 1;
        out.push_str(&format!(
            "[[rule]]\nname = {}\nskills = [{}]\n{body}effect = \"allow\"\n{comments}\n",
            quoted(&format!("suggested-{skill}-{n}")),
            quoted(skill)
        ));
    };
    for (backend, groups) in sql_rules(seen) {
        for (body, comments) in sql_bodies(&backend, &groups) {
            rule(body, comments);
        }
    }
    for (backend, groups) in http_rules(seen) {
        for (methods, paths) in groups {
            let comments: String = paths
                .iter()
                .map(|(what, used)| comment(what, used))
                .collect();
            let paths: BTreeSet<String> = paths.into_iter().map(|(p, _)| p).collect();
            rule(
                format!(
                    "backend = {}\nhttp = {{ methods = [{}], paths = [{}] }}\n",
                    quoted(&backend),
                    list(&methods),
                    list(&paths)
                ),
                comments,
            );
        }
    }
    let (names, types, comments) = dns_rule(seen);
    if !names.is_empty() {
        let types = if types.is_empty() {
            String::new()
        } else {
            format!("dns_types = [{}]\n", list(&types))
        };
        rule(format!("dns = [{}]\n{types}", list(&names)), comments);
    }
    for (grant, used) in &seen.grants {
        if let Grant::Connect { backend } = grant
            && policy
                .backend(backend)
                .is_some_and(|b| matches!(b.protocol, Protocol::Tcp | Protocol::Tls))
        {
            rule(
                format!("backend = {}\n", quoted(backend)),
                comment(&format!("connect {backend}"), used),
            );
        }
    }
    out.push_str(&forbidden_text(seen));
    out
}

/// The `sql` rules of one backend's groups. A statement that touches no relation (`SELECT
/// 1`, `BEGIN`) is covered by any grant of its kind: kinds that take no object get a rule
/// without `objects`; the others are covered by the backend's other grants of the kind, or
/// else need `objects = ["*"]` (said in a comment).
fn sql_bodies(backend: &str, groups: &[Group]) -> Vec<(String, String)> {
    let head = format!("backend = {}\n", quoted(backend));
    let granted: BTreeSet<&String> = groups
        .iter()
        .filter(|(_, objects)| objects.iter().any(|(o, _)| o != "*"))
        .flat_map(|(kinds, _)| kinds)
        .collect();
    let mut bodies = Vec::new();
    for (kinds, objects) in groups {
        let comments: String = objects
            .iter()
            .map(|(what, used)| comment(what, used))
            .collect();
        let named: BTreeSet<String> = objects
            .iter()
            .map(|(o, _)| o.clone())
            .filter(|o| o != "*")
            .collect();
        if !named.is_empty() {
            bodies.push((
                format!(
                    "{head}sql = {{ kinds = [{}], objects = [{}] }}\n",
                    list(kinds),
                    list(&named)
                ),
                comments.clone(),
            ));
        }
        if !objects.iter().any(|(o, _)| o == "*") {
            continue;
        }
        let (free, bound): (BTreeSet<String>, BTreeSet<String>) = kinds
            .iter()
            .filter(|k| !granted.contains(k))
            .cloned()
            .partition(|k| !needs_objects(k));
        if !free.is_empty() {
            bodies.push((
                format!("{head}sql = {{ kinds = [{}] }}\n", list(&free)),
                comments.clone(),
            ));
        }
        if !bound.is_empty() {
            let why = "# statements that touch no relation, of kinds granted nowhere else: narrow `*` if you can\n";
            bodies.push((
                format!(
                    "{head}sql = {{ kinds = [{}], objects = [\"*\"] }}\n",
                    list(&bound)
                ),
                format!("{why}{comments}"),
            ));
        }
    }
    bodies
}

/// Whether a grant of SQL kind `kind` must name objects.
fn needs_objects(kind: &str) -> bool {
    serde_json::from_value::<skillgate_policy::sql::SqlKind>(json!(kind))
        .map_or(true, |k| k.needs_objects())
}

/// Items (objects, paths) that share one set (of kinds, of methods), with their use.
type Group = (BTreeSet<String>, Vec<(String, Use)>);
/// Per backend, its groups.
type Groups = BTreeMap<String, Vec<Group>>;

/// Per backend: objects grouped by the set of kinds used on them.
fn sql_rules(seen: &Seen) -> Groups {
    let mut by_object: BTreeMap<(String, String), (BTreeSet<String>, Use)> = BTreeMap::new();
    for (grant, used) in &seen.grants {
        if let Grant::Sql {
            backend,
            object,
            kind,
        } = grant
        {
            let object = object.clone().unwrap_or_else(|| "*".to_owned());
            let entry = by_object
                .entry((backend.clone(), object))
                .or_insert_with(|| (BTreeSet::new(), empty_like(used)));
            entry.0.insert(kind.clone());
            merge(&mut entry.1, used);
        }
    }
    group(by_object)
}

/// Per backend: path templates grouped by the set of methods used on them.
fn http_rules(seen: &Seen) -> Groups {
    let mut by_path: BTreeMap<(String, String), (BTreeSet<String>, Use)> = BTreeMap::new();
    for (grant, used) in &seen.grants {
        if let Grant::Http {
            backend,
            path,
            method,
        } = grant
        {
            let entry = by_path
                .entry((backend.clone(), path.clone()))
                .or_insert_with(|| (BTreeSet::new(), empty_like(used)));
            entry.0.insert(method.clone());
            merge(&mut entry.1, used);
        }
    }
    group(by_path)
}

/// Adds `other` to `into`.
fn merge(into: &mut Use, other: &Use) {
    into.count += other.count;
    into.first_ns = into.first_ns.min(other.first_ns);
    into.last_ns = into.last_ns.max(other.last_ns);
}

/// Nothing yet, with `used`'s example.
fn empty_like(used: &Use) -> Use {
    Use {
        count: 0,
        first_ns: i64::MAX,
        last_ns: i64::MIN,
        example: used.example.clone(),
    }
}

fn group(by_item: BTreeMap<(String, String), (BTreeSet<String>, Use)>) -> Groups {
    let mut out: Groups = BTreeMap::new();
    for ((backend, item), (set, used)) in by_item {
        let groups = out.entry(backend).or_default();
        match groups.iter_mut().find(|(s, _)| *s == set) {
            Some((_, items)) => items.push((item, used)),
            None => groups.push((set, vec![(item, used)])),
        }
    }
    out
}

fn dns_rule(seen: &Seen) -> (BTreeSet<String>, BTreeSet<String>, String) {
    let (mut names, mut types, mut comments) = (BTreeSet::new(), BTreeSet::new(), String::new());
    for (grant, used) in &seen.grants {
        if let Grant::Dns { name, record_type } = grant {
            names.insert(name.clone());
            if !skillgate_policy::dns::ADDRESS_TYPES.contains(&record_type.as_str())
                && skillgate_policy::dns::KNOWN_TYPES.contains(&record_type.as_str())
            {
                types.insert(record_type.clone());
            }
            comments.push_str(&comment(&format!("{record_type} {name}"), used));
        }
    }
    (names, types, comments)
}

fn forbidden_text(seen: &Seen) -> String {
    let mut out = String::new();
    if !seen.forbidden.is_empty() {
        out.push_str("# Not suggested: a deny rule of the policy in force forbids these.\n");
        for ((operation, rule), used) in &seen.forbidden {
            out.push_str(&format!(
                "#   {operation} ({} times), denied by {rule}\n",
                used.count
            ));
        }
    }
    if !seen.unclassified.is_empty() {
        out.push_str("# Not suggested: no rule can be written for these (unparsed or unusual).\n");
        for (operation, used) in &seen.unclassified {
            out.push_str(&format!("#   {operation} ({} times)\n", used.count));
        }
    }
    out
}
