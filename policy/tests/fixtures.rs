//! The fixture corpus: `fixtures/NAME.policy.toml` with `fixtures/NAME.cases.toml`, each case a
//! request and the decision the policy must give.

use std::path::Path;

use serde::Deserialize;
use skillgate_policy::sql::LoginCatalog;
use skillgate_policy::{Decision, Policy};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    #[serde(rename = "case")]
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    skill: String,
    backend: String,
    #[serde(default)]
    groups: Vec<String>,
    /// A SQL string, an HTTP `METHOD /target`, or neither (a connection, by dial address).
    sql: Option<String>,
    http: Option<String>,
    /// An S3 `METHOD /bucket/key?query`, with `headers` and, for a DeleteObjects, `body`.
    s3: Option<String>,
    /// An MCP call: `METHOD [NAME|URI] [ARGUMENTS]` (`tools/call refund {"amount": 5}`).
    mcp: Option<String>,
    /// With `mcp`: how the tool's fingerprint changed (pinning).
    changed: Option<String>,
    body: Option<String>,
    /// Request headers of an `http` or `s3` case, `"Name: value"` each (names are lower-cased, as the
    /// proxy passes them).
    #[serde(default)]
    headers: Vec<String>,
    dial: Option<String>,
    /// allow | approve | deny
    expect: String,
    /// The deciding rule's name.
    rule: Option<String>,
    /// Text the reason must contain.
    reason: Option<String>,
    /// Columns that must be masked.
    #[serde(default)]
    mask_columns: Vec<String>,
    /// JSON fields that must be masked.
    #[serde(default)]
    mask_fields: Vec<String>,
    /// What observe-only rules would have decided.
    observed: Option<String>,
    /// Decide an `sql` case with the names `NAME.catalog.toml` says the login's catalog has
    /// (else as without a database).
    #[serde(default)]
    catalog: bool,
}

/// What a login reads from the database's catalog (see `sql::LoginCatalog`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFixture {
    /// Functions and operators in `public`.
    #[serde(default)]
    functions: Vec<String>,
    #[serde(default)]
    operators: Vec<String>,
    /// Relations in `pg_catalog`.
    #[serde(default)]
    catalog_relations: Vec<String>,
    /// Columns named like a function in `public`: `schema.relation.column`.
    #[serde(default)]
    columns: Vec<String>,
    /// Every column named like a masked column: `schema.relation.column`.
    #[serde(default)]
    masked_columns: Vec<String>,
}

fn login_catalog(path: &Path) -> Option<LoginCatalog> {
    let text = std::fs::read_to_string(path).ok()?;
    let fixture: CatalogFixture =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut catalog = LoginCatalog::default();
    fixture
        .functions
        .iter()
        .for_each(|f| catalog.add_function(f));
    fixture
        .operators
        .iter()
        .for_each(|o| catalog.add_operator(o));
    for name in &fixture.catalog_relations {
        catalog.add_catalog_relation(name);
    }
    let columns = fixture.columns.iter().map(|c| (c, false));
    for (column, masked) in columns.chain(fixture.masked_columns.iter().map(|c| (c, true))) {
        let parts: Vec<&str> = column.split('.').collect();
        let [schema, relation, column] = parts.as_slice() else {
            panic!(
                "{}: column `{column}` is not schema.relation.column",
                path.display()
            );
        };
        if masked {
            catalog.add_masked_column(schema, relation, column);
        } else {
            catalog.add_column(schema, relation, column);
        }
    }
    Some(catalog)
}

fn run<'p>(policy: &'p Policy, case: &Case, catalog: Option<&LoginCatalog>) -> Decision<'p> {
    let headers: Vec<(String, String)> = case
        .headers
        .iter()
        .map(|h| {
            let (name, value) = h.split_once(':').expect("headers = [\"Name: value\"]");
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    if let Some(mcp) = &case.mcp {
        let call = skillgate_policy::mcp::call_from_text(mcp).expect("mcp = \"METHOD ...\"");
        return policy
            .decide_mcp(
                &case.skill,
                &case.groups,
                &case.backend,
                &call,
                case.changed.as_deref(),
            )
            .decision;
    }
    if let Some(s3) = &case.s3 {
        let (method, target) = s3.split_once(' ').expect("s3 = \"METHOD /bucket/key\"");
        return policy
            .decide_s3(
                &case.skill,
                &case.groups,
                &case.backend,
                (method, target),
                &headers,
                case.body.as_deref().map(str::as_bytes),
            )
            .decision;
    }
    let what = (&case.sql, &case.http, &case.dial);
    match what {
        (Some(sql), None, None) => {
            let catalog = if case.catalog {
                Some(catalog.expect("`catalog = true` needs a NAME.catalog.toml"))
            } else {
                None
            };
            policy
                .decide_sql_in(&case.skill, &case.groups, &case.backend, sql, catalog)
                .decision
        }
        (None, Some(http), None) => {
            let (method, target) = http.split_once(' ').expect("http = \"METHOD /target\"");
            policy
                .decide_http(
                    &case.skill,
                    &case.groups,
                    &case.backend,
                    method,
                    target,
                    &headers,
                )
                .decision
        }
        (None, None, Some(dial)) => {
            let cgroup = policy.skill(&case.skill).map(|s| s.cgroup.clone());
            policy.decide_connect(&skillgate_policy::ConnectRequest {
                cgroup: cgroup.as_deref(),
                destination: dial.parse().expect("dial = \"ip:port\""),
                names: &[],
                server_name: None,
            })
        }
        _ => panic!("a case needs exactly one of sql, http, s3, dial"),
    }
}

#[test]
fn fixture_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut total = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".policy.toml") else {
            continue;
        };
        let policy_path = entry.path();
        let text = std::fs::read_to_string(&policy_path).unwrap();
        let policy = Policy::parse(&name, &text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cases_path = dir.join(format!("{stem}.cases.toml"));
        let cases: Cases = toml::from_str(&std::fs::read_to_string(&cases_path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", cases_path.display()));
        let catalog = login_catalog(&dir.join(format!("{stem}.catalog.toml")));
        for (i, case) in cases.cases.iter().enumerate() {
            total += 1;
            let d = run(&policy, case, catalog.as_ref());
            let label = format!(
                "{stem} case #{} ({} on {}: {})",
                i + 1,
                case.skill,
                case.backend,
                case.sql
                    .as_deref()
                    .or(case.http.as_deref())
                    .or(case.s3.as_deref())
                    .or(case.mcp.as_deref())
                    .or(case.dial.as_deref())
                    .unwrap_or("")
            );
            let mut problems = Vec::new();
            if d.effect.as_str() != case.expect {
                problems.push(format!(
                    "expected {}, got {}",
                    case.expect,
                    d.effect.as_str()
                ));
            }
            if let Some(rule) = &case.rule
                && d.rule != Some(rule.as_str())
            {
                problems.push(format!("expected rule {rule}, got {:?}", d.rule));
            }
            if let Some(reason) = &case.reason
                && !d.reason.contains(reason.as_str())
            {
                problems.push(format!("reason lacks `{reason}`"));
            }
            for column in &case.mask_columns {
                if !d.mask.columns.contains(column) {
                    problems.push(format!("column {column} not masked"));
                }
            }
            for field in &case.mask_fields {
                if !d.mask.fields.contains(field) {
                    problems.push(format!("field {field} not masked"));
                }
            }
            if let Some(observed) = &case.observed
                && d.observed.map(|e| e.as_str()) != Some(observed.as_str())
            {
                problems.push(format!(
                    "expected observed {observed}, got {:?}",
                    d.observed
                ));
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "{label}: {} (reason: {})",
                    problems.join("; "),
                    d.reason
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        total >= 150,
        "the corpus has {total} cases; keep at least 150"
    );
}
