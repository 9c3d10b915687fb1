//! The catalog snapshot the agent takes as itself right after its login, before the skill gets
//! the session: the search_path check, the masked columns' catalog entries that masks find
//! columns by, and what the catalog resolves the unqualified names of the session's statements
//! to.

use skillgate_policy::sql::LoginCatalog;

use super::login::next;
use super::*;

impl PgConn {
    /// The catalog entries of every column a mask rule on this backend names, read as the
    /// agent before the skill gets the session: (table oid, column number) → (schema, table,
    /// column). Refuses a login whose search path is not `public` ([`SEARCH_PATH_QUERY`]).
    /// Also keeps what the catalog resolves unqualified names to ([`NAMES_QUERY`]), which
    /// every statement of the session is decided with.
    pub(super) async fn catalog(&self, server: &mut Box<dyn Stream>) -> Result<Catalog, String> {
        let names = self.masked_column_names();
        let _ = self.catalog_names.set(names.clone());
        let mut catalog = Catalog::new();
        let mut login_catalog = LoginCatalog::default();
        let mut out = BytesMut::new();
        frontend::query(&catalog_query(&names), &mut out).map_err(|e| e.to_string())?;
        server.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut inbox = BytesMut::new();
        // Result sets completed so far: the search path's, the names', then the masks'.
        let mut completed = 0;
        let mut search_path = None;
        loop {
            let message = next(server, &mut inbox).await?;
            let body = wire::body(&message);
            match message[0] {
                b'C' => completed += 1,
                b'D' if completed == 0 => {
                    let row = wire::data_row(body).ok_or("bad search_path row")?;
                    let schemas = row.first().copied().flatten().map(String::from_utf8_lossy);
                    search_path = Some(schemas.unwrap_or_default().into_owned());
                }
                b'D' if completed == 1 => {
                    let row = wire::data_row(body).ok_or("bad catalog names row")?;
                    login_name(&mut login_catalog, &row)?;
                }
                b'D' => {
                    let row = wire::data_row(body).ok_or("bad catalog row")?;
                    masked_column(&mut catalog, &mut login_catalog, &row)?;
                }
                b'E' => {
                    return Err(format!(
                        "cannot read the backend's catalog (names, masked columns): {}",
                        wire::error_message(body).unwrap_or("(no message)")
                    ));
                }
                b'Z' => {
                    if !inbox.is_empty() {
                        return Err("the backend sent more than asked".to_owned());
                    }
                    require_public(search_path)?;
                    let _ = self.login_catalog.set(login_catalog);
                    return Ok(catalog);
                }
                _ => {}
            }
        }
    }

    /// The column names the mask rules on this backend name, sorted, each once.
    fn masked_column_names(&self) -> Vec<String> {
        let policy = &self.policy;
        let mut names: Vec<String> = policy
            .rules
            .iter()
            .filter(|r| policy.backends[r.backend].name == self.audit.backend)
            .flat_map(|r| r.mask.columns.iter())
            .map(|c| column_name(c).to_owned())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The one query batch of the snapshot: first, where the server resolves unqualified names;
/// then what its catalog resolves them to; then the columns named `names` (none asked when
/// no mask names a column).
fn catalog_query(names: &[String]) -> String {
    let mut sql = format!("{SEARCH_PATH_QUERY}; {NAMES_QUERY}");
    if !names.is_empty() {
        let list = names
            .iter()
            .map(|n| format!("'{}'", n.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(",");
        sql.push_str(&format!(
            "; SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attname IN ({list})"
        ));
    }
    sql
}

/// One row of the masked columns' query into `catalog`, and into `login_catalog`.
fn masked_column(
    catalog: &mut Catalog,
    login_catalog: &mut LoginCatalog,
    row: &[Option<&[u8]>],
) -> Result<(), String> {
    let text = |i| row_text(row, i).ok_or("bad catalog row");
    let oid: u32 = text(0)?.parse().map_err(|_| "bad catalog oid")?;
    let attnum: i16 = text(1)?.parse().map_err(|_| "bad catalog attnum")?;
    login_catalog.add_masked_column(text(2)?, text(3)?, text(4)?);
    catalog.insert(
        (oid, attnum),
        [
            text(2)?.to_owned(),
            text(3)?.to_owned(),
            text(4)?.to_owned(),
        ],
    );
    Ok(())
}

/// Refuses a login whose unqualified names resolve anywhere but `public`, the one schema the
/// policy classifies them in.
fn require_public(search_path: Option<String>) -> Result<(), String> {
    let search_path = search_path.ok_or("the backend did not say its search_path")?;
    if search_path != "public" {
        return Err(format!(
            "this login resolves unqualified names in schemas `{search_path}`, \
             and the policy classifies them in `public` alone: set the login \
             role's search_path to public (ALTER ROLE ... SET search_path = \
             public) or drop the schemas before it"
        ));
    }
    Ok(())
}

/// The schemas where the server resolves unqualified relation names (pg_catalog, always
/// searched first, aside): the classifier resolves them in `public`, so the session goes on
/// only if the server does too. `SET search_path` is never allowed afterwards.
pub(super) const SEARCH_PATH_QUERY: &str =
    "SELECT pg_catalog.array_to_string(pg_catalog.current_schemas(false), ',')";

/// What the catalog resolves unqualified names to (see [`LoginCatalog`]), one row per fact:
/// `f`/`o` and the name of a function (of any kind) or operator in the search path's own
/// schemas (`public`, as [`SEARCH_PATH_QUERY`] checks); `r` and a relation in `pg_catalog`;
/// `c`, schema, relation and column of each column named like such a function (where
/// `q.f` reads a column rather than calling `f(q)`; system columns included).
pub(super) const NAMES_QUERY: &str = "\
    WITH own AS (SELECT oid FROM pg_catalog.pg_namespace \
                 WHERE nspname OPERATOR(pg_catalog.=) ANY (pg_catalog.current_schemas(false)) \
                 AND nspname OPERATOR(pg_catalog.<>) 'pg_catalog'), \
         f AS (SELECT DISTINCT proname FROM pg_catalog.pg_proc \
               WHERE pronamespace OPERATOR(pg_catalog.=) ANY (SELECT oid FROM own)) \
    SELECT 'f', proname::pg_catalog.text, NULL, NULL FROM f \
    UNION ALL SELECT DISTINCT 'o', oprname::pg_catalog.text, NULL, NULL \
        FROM pg_catalog.pg_operator \
        WHERE oprnamespace OPERATOR(pg_catalog.=) ANY (SELECT oid FROM own) \
    UNION ALL SELECT 'r', relname::pg_catalog.text, NULL, NULL FROM pg_catalog.pg_class \
        WHERE relnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace \
    UNION ALL SELECT 'c', n.nspname::pg_catalog.text, c.relname::pg_catalog.text, \
        a.attname::pg_catalog.text \
        FROM pg_catalog.pg_attribute a \
        JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
        JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
        WHERE NOT a.attisdropped AND a.attname OPERATOR(pg_catalog.=) ANY (SELECT proname FROM f)";

/// One row of [`NAMES_QUERY`] into `catalog`.
fn login_name(catalog: &mut LoginCatalog, row: &[Option<&[u8]>]) -> Result<(), String> {
    let text = |i| row_text(row, i).ok_or("bad catalog names row");
    match text(0)? {
        "f" => catalog.add_function(text(1)?),
        "o" => catalog.add_operator(text(1)?),
        "r" => catalog.add_catalog_relation(text(1)?),
        "c" => catalog.add_column(text(1)?, text(2)?, text(3)?),
        _ => return Err("bad catalog names row".to_owned()),
    }
    Ok(())
}

/// Column `i` of a catalog row, as text (`None`: missing, NULL or not UTF-8).
fn row_text<'a>(row: &[Option<&'a [u8]>], i: usize) -> Option<&'a str> {
    row.get(i)
        .copied()
        .flatten()
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// A mask rule's column (`column`, `table.column` or `schema.table.column`): its column name.
pub(super) fn column_name(column: &str) -> &str {
    column.rsplit('.').next().unwrap_or(column)
}
