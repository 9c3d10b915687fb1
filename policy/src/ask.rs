//! Deciding from raw protocol input: a SQL string or an HTTP method and request target, the way
//! the proxy (and `skillgate policy explain`) asks. Input that cannot be classified is denied.

use crate::decide::{Decision, Effect, Operation, Request};
use crate::http::{self, Target};
use crate::model::{Mask, Policy};
use crate::s3::{self, BadS3, S3Request};
use crate::sql::{self, SqlError, Statement};

/// A SQL decision and the classification it rests on.
#[derive(Debug)]
pub struct SqlAnswer<'p> {
    pub statements: Result<Vec<Statement>, SqlError>,
    pub decision: Decision<'p>,
}

/// An HTTP decision and the normalised target it rests on.
#[derive(Debug)]
pub struct HttpAnswer<'p> {
    pub target: Result<Target, http::BadTarget>,
    pub decision: Decision<'p>,
}

/// An S3 decision and the classification it rests on.
#[derive(Debug)]
pub struct S3Answer<'p> {
    pub request: Result<S3Request, BadS3>,
    pub decision: Decision<'p>,
}

impl Policy {
    pub fn decide_sql(
        &self,
        skill: &str,
        token_groups: &[String],
        backend: &str,
        text: &str,
    ) -> SqlAnswer<'_> {
        self.decide_sql_in(skill, token_groups, backend, text, None)
    }

    /// [`Policy::decide_sql`] with the names a login's catalog resolves (see
    /// [`sql::LoginCatalog`]); `None`: the defaults, as without a database.
    pub fn decide_sql_in(
        &self,
        skill: &str,
        token_groups: &[String],
        backend: &str,
        text: &str,
        catalog: Option<&sql::LoginCatalog>,
    ) -> SqlAnswer<'_> {
        let mut statements = sql::classify(text);
        if let (Some(catalog), Ok(classified)) = (catalog, &mut statements) {
            let resolved = match catalog.resolve(classified) {
                std::borrow::Cow::Owned(resolved) => Some(resolved),
                std::borrow::Cow::Borrowed(_) => None,
            };
            if let Some(resolved) = resolved {
                *classified = resolved;
            }
        }
        let decision = match &statements {
            Ok(statements) => self.decide(&Request {
                skill,
                token_groups,
                backend,
                operation: Operation::Sql(statements),
            }),
            Err(err) => self.refuse(skill, backend, err.to_string()),
        };
        SqlAnswer {
            statements,
            decision,
        }
    }

    pub fn decide_http(
        &self,
        skill: &str,
        token_groups: &[String],
        backend: &str,
        method: &str,
        target: &str,
        headers: &[(String, String)],
    ) -> HttpAnswer<'_> {
        let target = http::normalize(target);
        let decision = match &target {
            Ok(normalised) => self.decide(&Request {
                skill,
                token_groups,
                backend,
                operation: Operation::Http {
                    method,
                    target: normalised,
                    headers,
                },
            }),
            Err(err) => self.refuse(skill, backend, err.to_string()),
        };
        HttpAnswer { target, decision }
    }

    /// Decides an S3 request: `target` as sent (`/bucket/key?query`), headers with lower-case
    /// names, and for a DeleteObjects its body (without it, the request is denied: its keys
    /// are what it deletes).
    pub fn decide_s3(
        &self,
        skill: &str,
        token_groups: &[String],
        backend: &str,
        (method, target): (&str, &str),
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> S3Answer<'_> {
        let mut request = s3::classify(method, target, headers);
        if let (Ok(classified), Some(body)) = (&mut request, body)
            && classified.needs_body()
            && let Err(bad) = classified.add_delete_keys(body)
        {
            request = Err(bad);
        }
        let decision = match &request {
            Ok(classified) => self.decide(&Request {
                skill,
                token_groups,
                backend,
                operation: Operation::S3(classified),
            }),
            Err(err) => self.refuse(skill, backend, err.to_string()),
        };
        S3Answer { request, decision }
    }

    fn refuse(&self, skill: &str, backend: &str, reason: String) -> Decision<'_> {
        Decision {
            effect: Effect::Deny,
            skill: self.skill(skill),
            backend: self.backend(backend),
            rule: None,
            rules: Vec::new(),
            mask: Mask::default(),
            reason,
            observed: None,
            exact_only: false,
        }
    }
}
