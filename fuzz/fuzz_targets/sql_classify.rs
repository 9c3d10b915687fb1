//! The SQL classifier (PostgreSQL's parser plus the walk over its tree): any string is
//! classified or refused, never a panic.
//!
//! Oracle for the classification cache, which shares one classification among texts of one
//! shape (`sql::shape`: the same tokens but for the values of constants): the text with every
//! constant's value changed has the same shape, and when it parses, the same classification.
//! Oracle for `sql::redact` (what the store keeps with `sql_literals = "redact"`): that text
//! redacts exactly as the original, so the record shows nothing of any constant's value.
//! Oracle for the login catalog's post-pass (`sql::LoginCatalog`): with a catalog that has
//! every name a statement resolved by default (pg_catalog holding each relation), it only
//! adds accesses, and each function or operator name is an `execute public.NAME` access.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_query::protobuf::Token;
use skillgate_policy::sql::{
    Access, LoginCatalog, Name, SqlKind, Statement, classify, redact, scan, shape,
};

/// `sql` with each constant replaced by another of its kind.
fn other_constants(sql: &str) -> Option<String> {
    let tokens = scan(sql)?;
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for token in tokens {
        let (start, end) = (token.start as usize, token.end as usize);
        let other = match Token::try_from(token.token).ok()? {
            Token::Sconst => "'zz'",
            Token::Iconst => "7",
            Token::Fconst => "7.5",
            Token::Bconst => "B'1'",
            Token::Xconst => "X'0'",
            _ => continue,
        };
        out.push_str(sql.get(at..start)?);
        out.push_str(other);
        at = end;
    }
    out.push_str(sql.get(at..)?);
    Some(out)
}

/// The post-pass with a catalog that has every name `statements` resolved by default.
fn resolves_by_adding(statements: &[Statement]) {
    let mut catalog = LoginCatalog::default();
    for name in statements.iter().flat_map(|s| &s.names) {
        match name {
            Name::Function(f) | Name::Attribute { name: f, .. } => catalog.add_function(f),
            Name::Operator(o) => catalog.add_operator(o),
            Name::Relation { name, .. } => catalog.add_catalog_relation(name),
        }
    }
    let resolved = catalog.resolve(statements);
    for (before, after) in statements.iter().zip(resolved.iter()) {
        for access in &before.accesses {
            assert!(
                after.accesses.contains(access),
                "the login catalog dropped {access}"
            );
        }
        for name in &before.names {
            let (Name::Function(f) | Name::Operator(f)) = name else {
                continue;
            };
            let execute = Access {
                kind: SqlKind::Execute,
                object: Some(format!("public.{f}")),
            };
            assert!(after.accesses.contains(&execute), "{f} not resolved");
        }
    }
}

fuzz_target!(|sql: &str| {
    let classified = classify(sql);
    if let Ok(statements) = &classified {
        for statement in statements {
            let _ = format!("{statement:?}");
        }
        resolves_by_adding(statements);
    }
    let Some(shape_of) = shape(sql) else {
        return;
    };
    let Some(other) = other_constants(sql) else {
        return;
    };
    // A string constant right after another continues it (`'a' 'b'` on two lines): the
    // replacement can then merge tokens; only same-shape variants are compared.
    if shape(&other).as_ref() != Some(&shape_of) {
        return;
    }
    assert_eq!(
        redact(sql),
        redact(&other),
        "redaction shows a constant's value:\n{sql}\n{other}"
    );
    if let (Ok(a), Ok(b)) = (&classified, classify(&other)) {
        assert_eq!(a, &b, "same shape, another classification:\n{sql}\n{other}");
    }
});
