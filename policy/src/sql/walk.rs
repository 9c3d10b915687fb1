//! The whole-tree walk: every node of every field of the parse tree is visited (through its
//! `serde::Serialize` implementation, see [`visit`]: no node type can be forgotten), and the
//! walk only keeps what classification needs:
//! relations, function calls, CTE scopes, locking clauses and a few statement flags.
//!
//! Relation reads are resolved once the whole tree is seen, because a statement's WITH comes
//! after its FROM in the tree: an unqualified name is a CTE only where PostgreSQL makes that CTE
//! visible (its WITH's main query, later sibling CTEs, anything nested in those; with
//! RECURSIVE, every CTE of that WITH as well), and a real relation everywhere else.

use serde::Serialize;

use super::visit::{self, Visitor};

use super::names::Name;
use super::{Access, SqlKind, catalog, qualify, statement_kind_of};

/// Accesses of one top-level statement, its own kind, and the names it resolved by default
/// (see [`Name`]).
pub(super) fn walk(node: &impl Serialize) -> (SqlKind, Vec<Access>, Vec<Name>) {
    let mut walker = Walker::default();
    // The walker never fails; an error here would be a bug in this file, and denies.
    if visit::visit(node, &mut walker).is_err() {
        return (SqlKind::Unknown, vec![unknown()], Vec::new());
    }
    let kind = walker.top_kind.unwrap_or(SqlKind::Unknown);
    let mut accesses = std::mem::take(&mut walker.accesses);
    let mut names = std::mem::take(&mut walker.names);
    // What FROM items are named matters only to `q.f` references.
    let mut attributes = std::mem::take(&mut walker.attributes);
    attributes.sort();
    attributes.dedup();
    let ranges = !attributes.is_empty();
    for read in std::mem::take(&mut walker.reads) {
        // Qualified names never resolve to a CTE.
        if read.schema.is_empty() && walker.is_cte(read.at, &read.name) {
            // `cte.f` is not a relation's column.
            if ranges {
                walker.ranges.push((read.eref, None));
            }
            continue;
        }
        accesses.push(Access {
            kind: read.kind,
            object: Some(qualify(&read.schema, &read.name)),
        });
        if ranges {
            let relation = (read.schema.clone(), read.name.clone());
            walker.ranges.push((read.eref, Some(relation)));
        }
        if read.schema.is_empty() {
            names.push(Name::Relation {
                kind: read.kind,
                name: read.name,
            });
        }
    }
    for (of, name) in attributes {
        names.push(Name::Attribute {
            relations: walker.relations_named(&of),
            of,
            name,
        });
    }
    (kind, accesses, names)
}

/// nextval and setval need UPDATE on their sequence, currval SELECT (or USAGE, which the
/// policy has no kind for): when the sequence is a constant the classifier reads it, so the
/// access is on the sequence rather than the function. (`sql::shape` never shares a text that
/// names these functions: here a constant's value changes the classification.)
/// Also the sequence's name when unqualified (the login's catalog may resolve it otherwise).
fn sequence_access(
    function: Option<&str>,
    literal: Option<&str>,
) -> Option<(Access, Option<String>)> {
    let kind = match function? {
        "pg_catalog.nextval" | "pg_catalog.setval" => SqlKind::Update,
        "pg_catalog.currval" => SqlKind::Select,
        _ => return None,
    };
    let parts = qualified_name(literal?)?;
    let (object, bare) = match parts.as_slice() {
        [name] => (qualify("", name), Some(name.clone())),
        [.., schema, name] => (qualify(schema, name), None),
        [] => return None,
    };
    let access = Access {
        kind,
        object: Some(object),
    };
    Some((access, bare))
}

/// A name as `regclass` reads it from text: dot-separated identifiers, unquoted ones folded
/// to lower case, quoted ones kept (`""` is a quote); `None` when it does not read as one.
fn qualified_name(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' || c.is_whitespace() {
                    break;
                }
                if !(c.is_alphanumeric() || c == '_' || c == '$') {
                    return None;
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
        }
        if part.is_empty() || parts.len() == 3 {
            return None;
        }
        parts.push(part);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(parts),
            Some('.') => {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            Some(_) => return None,
        }
    }
}

fn unknown() -> Access {
    Access {
        kind: SqlKind::Unknown,
        object: None,
    }
}

/// Where a reference sits in a query with a WITH: its main body, or the body of its n-th CTE.
#[derive(Debug, Clone, Copy)]
enum Pos {
    Main,
    Cte(usize),
}

/// The CTEs one query level declares, and where that query level sits in its parent's.
#[derive(Default)]
struct Scope {
    parent: Option<(usize, Pos)>,
    ctes: Vec<String>,
    recursive: bool,
}

/// A relation named where a relation is read (or locked): resolved at the end, when every
/// scope is complete.
#[derive(Clone)]
struct Read {
    schema: String,
    name: String,
    /// The query level it is named in (`None`: outside any query, e.g. a utility statement).
    at: Option<(usize, Pos)>,
    kind: SqlKind,
    /// The name the FROM item is known by in its query (its alias, else its name).
    eref: String,
    /// Aliases of the FROM subqueries it sits in, innermost first.
    via: Vec<String>,
}

/// An open struct on the way down, with what it has shown so far.
#[derive(Default)]
struct Frame {
    name: &'static str,
    field: &'static str,
    /// RangeVar: schemaname and relname (Alias: aliasname).
    schema: String,
    relname: String,
    /// RangeVar, RangeSubselect: the alias's name.
    alias: String,
    /// FuncCall funcname or List parts; LockingClause: the relations named in `OF`.
    parts: Vec<String>,
    /// Statement flags.
    into: bool,
    is_program: bool,
    filename: String,
    setting: String,
    /// Relations named in the statement's target fields, kind decided at its end (and their
    /// name when unqualified).
    targets: Vec<(String, Option<String>)>,
    /// Query statements: their scope.
    scope: Option<usize>,
    /// CommonTableExpr: its position in its WITH.
    cte: Option<usize>,
    /// RangeSubselect: how many reads there were when it opened.
    start: usize,
    /// SelectStmt: reads named in its FROM (subqueries included); what its locking clauses
    /// lock (every one of those, or the ones named in `OF`).
    from_reads: Vec<usize>,
    lock_all: bool,
    locked: Vec<String>,
    /// DML statements: whether the statement reads its target's columns (WHERE, RETURNING,
    /// SET from columns, a conflict target, MERGE's join), which needs SELECT on it.
    reads_target: bool,
    /// DML statements: more privileges on the target (ON CONFLICT DO UPDATE, MERGE actions).
    extra: Vec<SqlKind>,
    /// FuncCall: how many arguments have opened, and the first one when it is a string
    /// constant (possibly cast), which names the sequence of nextval/setval/currval.
    args: usize,
    literal: Option<String>,
    /// SubLink: an ANY sublink (its operator, when it names none, is `=`).
    any: bool,
}

#[derive(Default)]
struct Walker {
    frames: Vec<Frame>,
    accesses: Vec<Access>,
    /// Names resolved by default (see [`Name`]).
    names: Vec<Name>,
    /// The ColumnRef being walked (they do not nest): how many name parts so far, the last
    /// two, and whether it ends in `*` (buffers reused from one reference to the next).
    column_parts: usize,
    column_qualifier: String,
    column_last: String,
    column_star: bool,
    /// `q.f` references (`q` empty for `(expr).f`), resolved once every range is known.
    attributes: Vec<(String, String)>,
    /// What names a FROM item (or a DML target) has in the statement: a relation
    /// (`schema`, `name`), or `None` for anything else (a subquery, a function, a join, a CTE).
    ranges: Vec<(String, Option<(String, String)>)>,
    /// Relations read or locked, CTE references filtered at the end.
    reads: Vec<Read>,
    scopes: Vec<Scope>,
    top_kind: Option<SqlKind>,
}

fn is_statement(name: &str) -> bool {
    name.ends_with("Stmt") && name != "RawStmt"
}

/// Statements that are query levels: they may have a WITH and read relations.
fn is_query(name: &str) -> bool {
    matches!(
        name,
        "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"
    )
}

/// Fields of a statement that name what it writes or defines.
fn is_target(statement: &str, field: &str) -> bool {
    match (statement, field) {
        ("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" | "CopyStmt", "relation") => true,
        ("SelectStmt", "into_clause") => true,
        (_, "relation" | "relations" | "objects" | "view" | "into") => {
            statement_kind_of(statement, false, false, "") == SqlKind::Ddl
        }
        _ => false,
    }
}

impl Walker {
    /// The innermost statement frame, if the path from it down to the top frame passes only
    /// through `field` of that statement (i.e. whether we are inside that field).
    fn statement_target(&self) -> Option<usize> {
        let i = self.frames.iter().rposition(|f| is_statement(f.name))?;
        is_target(self.frames[i].name, self.frames[i].field).then_some(i)
    }

    /// The innermost statement frame.
    fn statement(&mut self) -> Option<&mut Frame> {
        self.frames.iter_mut().rev().find(|f| is_statement(f.name))
    }

    /// The innermost frame that is not a wrapper (`Node`, `String`).
    fn owner(&mut self) -> Option<&mut Frame> {
        self.frames
            .iter_mut()
            .rev()
            .find(|f| !matches!(f.name, "Node" | "String"))
    }

    /// The innermost query level, and where in it the walk is.
    fn context(&self) -> Option<(usize, Pos)> {
        let i = self.frames.iter().rposition(|f| f.scope.is_some())?;
        let owner = &self.frames[i];
        let pos = if owner.field == "with_clause" {
            // Inside a CTE's body; a reference anywhere else in a WITH sees none of its CTEs.
            Pos::Cte(self.frames[i + 1..].iter().find_map(|f| f.cte).unwrap_or(0))
        } else {
            Pos::Main
        };
        Some((owner.scope?, pos))
    }

    /// Whether `name`, named at `at`, is a CTE visible there.
    fn is_cte(&self, mut at: Option<(usize, Pos)>, name: &str) -> bool {
        while let Some((s, pos)) = at {
            let scope = &self.scopes[s];
            let visible = match pos {
                Pos::Cte(i) if !scope.recursive => &scope.ctes[..i.min(scope.ctes.len())],
                _ => &scope.ctes[..],
            };
            if visible.iter().any(|c| c == name) {
                return true;
            }
            at = scope.parent;
        }
        false
    }

    /// The relations `q` names in the statement, `None` if it names anything else too (or
    /// nothing).
    fn relations_named(&self, q: &str) -> Option<Vec<(String, String)>> {
        let mut relations = Vec::new();
        for (eref, relation) in &self.ranges {
            if eref == q {
                relations.push(relation.clone()?);
            }
        }
        (!relations.is_empty()).then_some(relations)
    }

    fn open(&mut self, name: &'static str) {
        if let Some(call) = self.frames.last_mut()
            && call.name == "FuncCall"
            && call.field == "args"
        {
            call.args += 1;
        }
        let mut frame = Frame {
            name,
            ..Frame::default()
        };
        if is_query(name) {
            let parent = self.context();
            self.scopes.push(Scope {
                parent,
                ..Scope::default()
            });
            frame.scope = Some(self.scopes.len() - 1);
        }
        match name {
            "RangeSubselect" => frame.start = self.reads.len(),
            // MERGE's join condition reads the target.
            "MergeStmt" => frame.reads_target = true,
            // A conflict target reads the target's columns.
            "InferClause" => self.reads_target(),
            // UPDATE ... SET a = b reads the target's columns.
            // (in a subquery too: it may be correlated).
            "ColumnRef" => {
                self.column_parts = 0;
                self.column_star = false;
                for update in &mut self.frames {
                    if update.name == "UpdateStmt" && update.field == "target_list" {
                        update.reads_target = true;
                    }
                }
            }
            "AStar" => self.column_star = true,
            _ => {}
        }
        self.frames.push(frame);
    }

    fn reads_target(&mut self) {
        if let Some(statement) = self.statement() {
            statement.reads_target = true;
        }
    }

    fn close(&mut self, frame: Frame) {
        match frame.name {
            "RangeVar" => self.close_range_var(frame),
            "Alias" => {
                if let Some(parent) = self.frames.last_mut() {
                    if parent.name != "RangeVar" {
                        self.ranges.push((frame.relname.clone(), None));
                    }
                    parent.alias = frame.relname;
                }
            }
            "ColumnRef" if self.column_parts >= 2 && !self.column_star => {
                let of = self.column_qualifier.clone();
                let name = self.column_last.clone();
                self.attributes.push((of, name));
            }
            "RangeSubselect" => {
                for read in &mut self.reads[frame.start..] {
                    read.via.push(frame.alias.clone());
                }
            }
            "LockingClause" => {
                if let Some(select) = self.statement() {
                    if frame.parts.is_empty() {
                        select.lock_all = true;
                    } else {
                        select.locked.extend(frame.parts);
                    }
                }
            }
            "List" if !frame.parts.is_empty() => {
                // DROP's objects are lists of name parts.
                if let Some(i) = self.statement_target() {
                    let (schema, name) = match frame.parts.as_slice() {
                        [name] => ("", name.as_str()),
                        [.., schema, name] => (schema.as_str(), name.as_str()),
                        [] => ("", ""),
                    };
                    let object = qualify(schema, name);
                    let bare = schema.is_empty().then(|| name.to_owned());
                    self.frames[i].targets.push((object, bare));
                }
            }
            "FuncCall" => {
                let in_call = self
                    .owner()
                    .is_some_and(|f| f.name == "CallStmt" && f.field == "funccall");
                let object = if in_call {
                    Some(catalog::procedure(&frame.parts))
                } else {
                    catalog::function_call(&frame.parts)
                };
                // Resolved to pg_catalog by its name alone: a function of that name in
                // `public` may match better.
                if let [name] = frame.parts.as_slice()
                    && catalog::is_builtin_function(name)
                {
                    self.names.push(Name::Function(name.clone()));
                }
                match sequence_access(object.as_deref(), frame.literal.as_deref()) {
                    Some((access, bare)) => {
                        if let Some(name) = bare {
                            self.names.push(Name::Relation {
                                kind: access.kind,
                                name,
                            });
                        }
                        self.accesses.push(access);
                    }
                    None => self.execute(object),
                }
            }
            // `x IN (SELECT ...)` compares with `=`, found by name.
            "SubLink" if frame.any && frame.parts.is_empty() => {
                self.names.push(Name::Operator("=".to_owned()));
            }
            "AExpr" | "SubLink" | "SortBy" if !frame.parts.is_empty() => {
                let object = catalog::operator(&frame.parts);
                if object.is_none()
                    && let [name] = frame.parts.as_slice()
                {
                    self.builtin_operator(name);
                }
                self.execute(object);
            }
            "TypeName" => {
                let cast = self
                    .owner()
                    .is_some_and(|f| f.name == "TypeCast" && f.field == "type_name");
                if cast {
                    self.execute(catalog::cast(&frame.parts));
                }
            }
            // TABLESAMPLE runs its method's handler function.
            "RangeTableSample" => {
                let builtin =
                    matches!(frame.parts.as_slice(), [m] if m == "bernoulli" || m == "system");
                if !builtin {
                    self.execute(Some(catalog::procedure(&frame.parts)));
                }
            }
            name if is_statement(name) => self.close_statement(frame),
            _ => {}
        }
    }

    /// An unqualified built-in operator (or the parser's name for a comparison it expands
    /// into operators, `BETWEEN`), resolved by name: `public` may have a better match.
    fn builtin_operator(&mut self, name: &str) {
        if name.contains("BETWEEN") {
            for op in ["<", "<=", ">", ">="] {
                self.names.push(Name::Operator(op.to_owned()));
            }
        } else if name.chars().all(|c| "+-*/<>=~!@#%^&|`?".contains(c)) {
            self.names.push(Name::Operator(name.to_owned()));
        }
    }

    fn execute(&mut self, object: Option<String>) {
        if let Some(object) = object {
            self.accesses.push(Access {
                kind: SqlKind::Execute,
                object: Some(object),
            });
        }
    }

    fn close_range_var(&mut self, frame: Frame) {
        // `FOR UPDATE OF t`: names a FROM item of the query, not a relation read.
        if let Some(owner) = self.owner()
            && owner.name == "LockingClause"
        {
            owner.parts.push(frame.relname);
            return;
        }
        if let Some(i) = self.statement_target() {
            let target = qualify(&frame.schema, &frame.relname);
            let eref = if frame.alias.is_empty() {
                frame.relname.clone()
            } else {
                frame.alias
            };
            self.ranges
                .push((eref, Some((frame.schema.clone(), frame.relname.clone()))));
            let bare = frame.schema.is_empty().then_some(frame.relname);
            self.frames[i].targets.push((target, bare));
            return;
        }
        let index = self.reads.len();
        let eref = if frame.alias.is_empty() {
            frame.relname.clone()
        } else {
            frame.alias
        };
        self.reads.push(Read {
            at: self.context(),
            schema: frame.schema,
            name: frame.relname,
            kind: SqlKind::Select,
            eref,
            via: Vec::new(),
        });
        for select in &mut self.frames {
            if select.name == "SelectStmt" && select.field == "from_clause" {
                select.from_reads.push(index);
            }
        }
    }

    fn close_statement(&mut self, frame: Frame) {
        let name = frame.name;
        let kind = statement_kind_of(name, frame.into, frame.is_program, &frame.filename);
        for (target, bare) in &frame.targets {
            let mut kinds = vec![kind];
            kinds.extend(&frame.extra);
            if frame.reads_target && is_query(name) {
                kinds.push(SqlKind::Select);
            }
            for kind in kinds {
                if let Some(bare) = bare {
                    self.names.push(Name::Relation {
                        kind,
                        name: bare.clone(),
                    });
                }
                self.accesses.push(Access {
                    kind,
                    object: Some(target.clone()),
                });
            }
        }
        if frame.lock_all || !frame.locked.is_empty() {
            self.lock(&frame);
        }
        if matches!(name, "VariableSetStmt" | "VariableShowStmt") && !frame.setting.is_empty() {
            self.accesses.push(Access {
                kind,
                object: Some(frame.setting),
            });
        }
        let nested = self.frames.iter().any(|f| is_statement(f.name));
        if nested {
            if kind != SqlKind::Select {
                self.accesses.push(Access { kind, object: None });
            }
        } else {
            self.top_kind = Some(kind);
        }
    }

    /// SELECT ... FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE needs UPDATE on what it locks: the
    /// relations of its FROM (subqueries included), or those `OF` names (by alias, or the
    /// subquery they sit in). A name that matches none of them locks them all: PostgreSQL
    /// refuses such a statement, and over-asking only denies more.
    fn lock(&mut self, select: &Frame) {
        let named = |read: &Read, name: &String| &read.eref == name || read.via.contains(name);
        let all = select.lock_all
            || select.locked.iter().any(|name| {
                !select
                    .from_reads
                    .iter()
                    .any(|&i| named(&self.reads[i], name))
            });
        let locked: Vec<Read> = select
            .from_reads
            .iter()
            .map(|&i| &self.reads[i])
            .filter(|read| all || select.locked.iter().any(|name| named(read, name)))
            .map(|read| Read {
                kind: SqlKind::Update,
                ..read.clone()
            })
            .collect();
        self.reads.extend(locked);
    }

    fn string(&mut self, value: &str) {
        let Some(top) = self.frames.last_mut() else {
            return;
        };
        match (top.name, top.field) {
            ("RangeVar", "schemaname") => top.schema = value.to_owned(),
            ("RangeVar", "relname") | ("Alias", "aliasname") => top.relname = value.to_owned(),
            ("CommonTableExpr", "ctename") => {
                if let Some(owner) = self.frames.iter().rev().find_map(|f| f.scope) {
                    let ctes = &mut self.scopes[owner].ctes;
                    ctes.push(value.to_owned());
                    let index = ctes.len() - 1;
                    if let Some(top) = self.frames.last_mut() {
                        top.cte = Some(index);
                    }
                }
            }
            ("CopyStmt", "filename") => top.filename = value.to_owned(),
            ("VariableSetStmt" | "VariableShowStmt", "name") => top.setting = value.to_owned(),
            ("String", "sval") => {
                self.first_literal(value);
                match self.owner().map(|f| (f.name, f.field)) {
                    Some(("ColumnRef", "fields")) => {
                        self.column_parts += 1;
                        std::mem::swap(&mut self.column_qualifier, &mut self.column_last);
                        self.column_last.clear();
                        self.column_last.push_str(value);
                        return;
                    }
                    // `(expr).f`: a field, or a call `f(expr)`.
                    Some(("AIndirection", "indirection")) => {
                        self.attributes.push((String::new(), value.to_owned()));
                        return;
                    }
                    // JOIN ... USING compares with `=`, found by name.
                    Some(("JoinExpr", "using_clause")) => {
                        self.names.push(Name::Operator("=".to_owned()));
                        return;
                    }
                    _ => {}
                }
                if let Some(owner) = self.owner()
                    && matches!(
                        (owner.name, owner.field),
                        ("FuncCall", "funcname")
                            | ("List", "items")
                            | ("AExpr", "name")
                            | ("SubLink", "oper_name")
                            | ("SortBy", "use_op")
                            | ("TypeName", "names")
                            | ("RangeTableSample", "method")
                    )
                {
                    owner.parts.push(value.to_owned());
                }
            }
            _ => {}
        }
    }

    /// Keeps `value` on the innermost FuncCall when it is that call's first argument, a
    /// string constant, possibly cast (`nextval('s')`, `nextval('s'::regclass)`).
    fn first_literal(&mut self, value: &str) {
        let Some(f) = self.frames.iter().rposition(|f| f.name == "FuncCall") else {
            return;
        };
        let direct = self.frames[f + 1..].iter().all(|frame| {
            matches!(
                (frame.name, frame.field),
                ("Node" | "String" | "AConst", _) | ("TypeCast", "arg")
            )
        });
        let constant = self.frames[f + 1..]
            .iter()
            .any(|frame| frame.name == "AConst");
        let call = &mut self.frames[f];
        if direct && constant && call.field == "args" && call.args == 1 && call.literal.is_none() {
            call.literal = Some(value.to_owned());
        }
    }

    fn int(&mut self, value: i64) {
        let Some(top) = self.frames.last() else {
            return;
        };
        // DROP/TRUNCATE/REVOKE/ALTER ... CASCADE (pg_query's DropBehavior): what else it drops
        // or truncates is not in the text, so it is an access no grant of the named objects
        // covers.
        if top.field == "behavior" && value == 2 {
            self.accesses.push(unknown());
            return;
        }
        // pg_query's SubLinkType: ANY (`x IN (SELECT ...)` without an operator is `= ANY`).
        if (top.name, top.field, value) == ("SubLink", "sub_link_type", 3) {
            if let Some(top) = self.frames.last_mut() {
                top.any = true;
            }
            return;
        }
        // pg_query's OnConflictAction and CmdType numbers.
        let more = match (top.name, top.field, value) {
            ("OnConflictClause", "action", 3) => Some(SqlKind::Update),
            ("MergeWhenClause", "command_type", 3) => Some(SqlKind::Update),
            ("MergeWhenClause", "command_type", 4) => Some(SqlKind::Insert),
            ("MergeWhenClause", "command_type", 5) => Some(SqlKind::Delete),
            _ => None,
        };
        if let Some(kind) = more
            && let Some(statement) = self.statement()
        {
            statement.extra.push(kind);
            statement.reads_target = true;
        }
    }

    fn some(&mut self) {
        let Some(top) = self.frames.last_mut() else {
            return;
        };
        match (top.name, top.field) {
            ("SelectStmt", "into_clause") => top.into = true,
            ("UpdateStmt" | "DeleteStmt", "where_clause") => top.reads_target = true,
            ("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt", "returning_clause") => {
                top.reads_target = true;
            }
            // CASE x WHEN y compares with `=`, found by name.
            ("CaseExpr", "arg") => self.names.push(Name::Operator("=".to_owned())),
            _ => {}
        }
    }

    fn flag(&mut self, value: bool) {
        let Some(top) = self.frames.last_mut() else {
            return;
        };
        match (top.name, top.field) {
            ("CopyStmt", "is_program") => top.is_program = value,
            // NATURAL JOIN compares the common columns with `=`, found by name.
            ("JoinExpr", "is_natural") if value => {
                self.names.push(Name::Operator("=".to_owned()));
            }
            ("WithClause", "recursive") if value => {
                if let Some(owner) = self.frames.iter().rev().find_map(|f| f.scope) {
                    self.scopes[owner].recursive = true;
                }
            }
            _ => {}
        }
    }
}

impl Visitor for Walker {
    fn open(&mut self, name: &'static str) {
        Walker::open(self, name);
    }
    fn field(&mut self, key: &'static str) {
        if let Some(top) = self.frames.last_mut() {
            top.field = key;
        }
    }
    fn close(&mut self) {
        if let Some(frame) = self.frames.pop() {
            Walker::close(self, frame);
        }
    }
    fn string(&mut self, value: &str) {
        Walker::string(self, value);
    }
    fn boolean(&mut self, value: bool) {
        self.flag(value);
    }
    fn integer(&mut self, value: i64) {
        self.int(value);
    }
    fn some(&mut self) {
        Walker::some(self);
    }
}
