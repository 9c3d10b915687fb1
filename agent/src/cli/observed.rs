//! What skills did, read back from the store for the policy tools: each recorded decision
//! as the operation the policy decides (an SQL access, an HTTP method and path, a DNS name,
//! a connection), and what a candidate policy decides for it now.

use skillgate_policy::{ConnectRequest, Decision, DnsRequest, Effect, Policy, Protocol};

use crate::record::query::OperationRow;

/// How a recorded decision string reads as an effect (`allow`, `deny`, `approve`).
pub fn recorded_effect(decision: &str) -> Option<Effect> {
    match decision {
        "allow" => Some(Effect::Allow),
        "deny" => Some(Effect::Deny),
        "approve" => Some(Effect::Approve),
        _ => None,
    }
}

/// What an operation asked, as the policy's request functions take it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Asked {
    /// A statement's text.
    Sql(String),
    /// Method and target (`/path?query`).
    Http(String, String),
    /// Record type and name.
    Dns(String, String),
    /// A connection to a `tcp` or `tls` backend, to this address.
    Connect(String),
}

impl Asked {
    /// The operation a recorded decision was about, if the policy decides it on its own
    /// (connections to `http` and `postgres` backends are decided per request or statement).
    pub fn of(row: &OperationRow, policy: &Policy) -> Option<Self> {
        match row.kind.as_str() {
            "sql" => Some(Self::Sql(row.operation.clone())),
            "http" => {
                let (method, target) = row.operation.split_once(' ')?;
                Some(Self::Http(method.to_owned(), target.to_owned()))
            }
            "dns" => {
                let (record_type, name) = row.operation.split_once(' ')?;
                Some(Self::Dns(record_type.to_owned(), name.to_owned()))
            }
            "connect" => {
                let backend = policy.backend(row.backend.as_deref()?)?;
                matches!(backend.protocol, Protocol::Tcp | Protocol::Tls)
                    .then(|| Self::Connect(row.origin.clone()))
            }
            _ => None,
        }
    }

    /// What `policy` decides for it, asked by `skill` on `backend` (`None`: a recorded
    /// address that does not parse).
    pub fn decide<'p>(
        &self,
        policy: &'p Policy,
        skill: &str,
        backend: &str,
    ) -> Option<Decision<'p>> {
        Some(match self {
            Self::Sql(text) => policy.decide_sql(skill, &[], backend, text).decision,
            Self::Http(method, target) => {
                policy
                    .decide_http(skill, &[], backend, method, target, &[])
                    .decision
            }
            Self::Dns(record_type, name) => policy.decide_dns(&DnsRequest {
                skill,
                name,
                record_type,
            }),
            Self::Connect(origin) => policy.decide_connect(&ConnectRequest {
                cgroup: policy.skill(skill).map(|s| s.cgroup.as_str()),
                destination: origin.parse().ok()?,
                names: &[],
                server_name: None,
            }),
        })
    }
}

/// The deny rule of `policy` that forbids what `decision` decided, enforced or observed.
pub fn forbidding_rule(policy: &Policy, decision: &Decision<'_>) -> Option<String> {
    let denied = decision.effect == Effect::Deny || decision.observed == Some(Effect::Deny);
    if !denied {
        return None;
    }
    decision
        .rules
        .iter()
        .find(|r| {
            // Rule ids are positions in the file, shared by backend and `dns` rules.
            let backend_deny = policy
                .rules
                .iter()
                .any(|rule| rule.id == r.id && rule.effect == Effect::Deny);
            let dns_deny = policy
                .dns_rules
                .iter()
                .any(|rule| rule.id == r.id && rule.effect == Effect::Deny);
            backend_deny || dns_deny
        })
        .map(|r| format!("{} ({})", r.name, r.location))
}

/// An HTTP path as a rule's path pattern: segments that vary from request to request (see
/// [`varies`]) become `*`.
pub fn path_template(target: &str) -> String {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let segments: Vec<&str> = path
        .split('/')
        .skip(1)
        .map(|segment| if varies(segment) { "*" } else { segment })
        .collect();
    format!("/{}", segments.join("/"))
}

/// Whether a path segment is a value rather than a name: all digits; a UUID; 16 or more hex
/// digits (a hash); 20 or more characters mixing letters and digits (a token or generated
/// id); a value the record masked (`[email]`); or anything a path pattern could not say
/// literally (`*`, `%`).
pub fn varies(segment: &str) -> bool {
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    let hex = segment.bytes().all(|b| b.is_ascii_hexdigit());
    let uuid = segment.len() == 36
        && segment.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    (!segment.is_empty() && digits == segment.len())
        || uuid
        || (hex && segment.len() >= 16)
        || (segment.len() >= 20 && digits > 0 && digits < segment.len())
        || segment.starts_with('[')
        || segment.contains(['*', '%'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_numbers_uuids_and_hashes_become_wildcards() {
        assert_eq!(path_template("/orders/42/items?x=1"), "/orders/*/items");
        assert_eq!(
            path_template("/users/0b7e6b0e-6a4e-4b8a-9a55-3c1f0a2b7d11/profile"),
            "/users/*/profile"
        );
        assert_eq!(
            path_template("/blobs/9f86d081884c7d659a2feaa0c55ad015"),
            "/blobs/*"
        );
        assert_eq!(path_template("/v2/reports/summary"), "/v2/reports/summary");
        assert_eq!(
            path_template("/customers/[email]/orders"),
            "/customers/*/orders"
        );
        assert_eq!(path_template("/"), "/");
        assert!(!varies("v2") && !varies("health") && !varies("2026-summary"));
    }
}
