//! From the file as written to the compiled policy, with an error at the first problem.

use std::collections::HashMap;
use std::net::SocketAddr;

use toml::Spanned;

use super::{
    Backend, HttpOp, Mask, Misuse, ObjectPattern, Oidc, Policy, Protocol, Rule, RuleOp, Skill,
    SqlOp, Tls, Upstream, canonical,
};
use crate::decide::Effect;
use crate::dns::{DialName, DnsRule, KNOWN_TYPES, NamePattern};
use crate::error::PolicyError;
use crate::file::{BackendDef, HttpDef, PolicyFile, RuleDef, SkillDef, SqlDef, TlsDef};
use crate::http::PathPattern;
use crate::sql::SqlKind;
use crate::sql::is_builtin_function;

pub(crate) struct Builder<'a> {
    origin: &'a str,
    text: &'a str,
    /// Byte offsets where lines 2, 3, ... start: a rule's line is a binary search, not a scan
    /// from the top of the file (which made loading 10,000 rules quadratic).
    line_starts: Vec<usize>,
}

impl<'a> Builder<'a> {
    pub fn new(origin: &'a str, text: &'a str) -> Self {
        let line_starts = text.match_indices('\n').map(|(i, _)| i + 1).collect();
        Self {
            origin,
            text,
            line_starts,
        }
    }

    /// The line (from 1) of byte offset `at`.
    fn line(&self, at: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= at) + 1
    }

    pub(super) fn error<T>(&self, at: &Spanned<T>, message: String) -> PolicyError {
        PolicyError::invalid(self.origin, self.text, at.span(), message)
    }

    pub fn build(&self, file: PolicyFile) -> Result<Policy, PolicyError> {
        let mut policy = Policy {
            origin: self.origin.to_owned(),
            mode: file.mode,
            ..Policy::default()
        };
        for group in &file.groups {
            let name = self.name(group, "group")?;
            if !policy.groups.contains(&name) {
                policy.groups.push(name);
            }
        }
        for def in &file.skills {
            let skill = self.skill(def, &policy)?;
            for group in &skill.groups {
                if !policy.groups.contains(group) {
                    policy.groups.push(group.clone());
                }
            }
            policy.add_skill(skill);
        }
        for def in &file.backends {
            let backend = self.backend(def, &policy)?;
            policy.add_backend(backend);
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut shapes: HashMap<String, (Effect, String)> = HashMap::new();
        for (n, def) in file.rules.iter().enumerate() {
            let Some(backend) = &def.backend else {
                let rule = self.dns_rule(n, def, &policy)?;
                if let Some(name) = &def.name
                    && names.insert(rule.name.clone(), n).is_some()
                {
                    return Err(
                        self.error(name, format!("rule name `{}` is used twice", rule.name))
                    );
                }
                policy.dns_rules.push(rule);
                continue;
            };
            let rule = self.rule(n, def, backend, &policy)?;
            if let Some(name) = &def.name
                && names.insert(rule.name.clone(), n).is_some()
            {
                return Err(self.error(name, format!("rule name `{}` is used twice", rule.name)));
            }
            // Two rules for the same subjects, backend and operations with opposite effects are
            // a mistake: deny would silently win.
            let shape = format!(
                "{:?}|{:?}|{}|{:?}|{:?}",
                sorted(&rule.skills),
                sorted(&rule.groups),
                rule.backend,
                rule.op,
                rule.mode
            );
            if let Some((effect, other)) = shapes.get(&shape) {
                if (*effect == Effect::Deny) != (rule.effect == Effect::Deny) {
                    return Err(self.error(
                        &def.effect,
                        format!(
                            "{} conflicts with {other}: same skills, groups, backend and \
                             operations, opposite effects (deny would always win); remove one",
                            rule.name
                        ),
                    ));
                }
            } else {
                shapes.insert(shape, (rule.effect, rule.name.clone()));
            }
            policy.rules.push(rule);
        }
        index(&mut policy);
        Ok(policy)
    }

    fn skill(&self, def: &SkillDef, policy: &Policy) -> Result<Skill, PolicyError> {
        let name = self.name(&def.name, "skill")?;
        if policy.skill(&name).is_some() {
            return Err(self.error(&def.name, format!("skill `{name}` is declared twice")));
        }
        let cgroup = match (&def.cgroup, &def.unit) {
            (Some(_), Some(unit)) => {
                return Err(self.error(
                    unit,
                    format!("skill `{name}` has both `cgroup` and `unit`: keep one"),
                ));
            }
            (Some(cgroup), None) => self.cgroup_path(cgroup)?,
            (None, Some(unit)) => {
                let value = unit.get_ref();
                let known = [".service", ".scope", ".slice"];
                if !known.iter().any(|s| value.ends_with(s)) || value.contains('/') {
                    return Err(self.error(
                        unit,
                        format!(
                            "unit `{value}` must be a systemd service, scope or slice name, \
                             like `reporter.service`"
                        ),
                    ));
                }
                value.clone()
            }
            (None, None) => name.clone(),
        };
        if let Some(other) = policy.skills.iter().find(|s| s.cgroup == cgroup) {
            let at = def
                .cgroup
                .as_ref()
                .or(def.unit.as_ref())
                .unwrap_or(&def.name);
            return Err(self.error(
                at,
                format!(
                    "skills `{}` and `{name}` share cgroup `{cgroup}`",
                    other.name
                ),
            ));
        }
        let mut groups = Vec::new();
        for group in &def.groups {
            groups.push(self.name(group, "group")?);
        }
        let oidc = match &def.oidc {
            Some(oidc) => {
                let issuer = oidc.issuer.get_ref();
                if !(issuer.starts_with("https://") || issuer.starts_with("http://127.")) {
                    return Err(self.error(
                        &oidc.issuer,
                        format!("OIDC issuer `{issuer}` must be an https:// URL"),
                    ));
                }
                if oidc.audience.get_ref().is_empty() {
                    return Err(self.error(&oidc.audience, "OIDC audience is empty".to_owned()));
                }
                Some(Oidc {
                    issuer: issuer.clone(),
                    audience: oidc.audience.get_ref().clone(),
                    subject: oidc.subject.clone(),
                    client_id: oidc.client_id.clone(),
                })
            }
            None => None,
        };
        Ok(Skill {
            name,
            cgroup,
            groups,
            oidc,
            serve: def.serve,
        })
    }

    fn backend(&self, def: &BackendDef, policy: &Policy) -> Result<Backend, PolicyError> {
        let name = self.name(&def.name, "backend")?;
        if policy.backend(&name).is_some() {
            return Err(self.error(&def.name, format!("backend `{name}` is declared twice")));
        }
        if def.dial.is_empty() {
            return Err(self.error(
                &def.name,
                format!("backend `{name}` has no `dial` address: skills could not reach it"),
            ));
        }
        let mut dial = Vec::with_capacity(def.dial.len());
        let mut dial_names: Vec<DialName> = Vec::new();
        for spanned in &def.dial {
            if let Some(named) = self.dial_name(spanned)? {
                let taken = policy
                    .backends
                    .iter()
                    .find(|b| b.dial_names.contains(&named));
                if let Some(other) = taken {
                    return Err(self.error(
                        spanned,
                        format!("`{named}` is dialed for backend `{}` already", other.name),
                    ));
                }
                if dial_names.contains(&named) {
                    return Err(self.error(spanned, format!("`{named}` is listed twice")));
                }
                dial_names.push(named);
                continue;
            }
            let addr = canonical(self.socket_addr(spanned, "dial")?);
            if let Some(&other) = policy.by_dial.get(&addr) {
                return Err(self.error(
                    spanned,
                    format!(
                        "`{addr}` is dialed for backend `{}` already",
                        policy.backends[other].name
                    ),
                ));
            }
            if dial.contains(&addr) {
                return Err(self.error(spanned, format!("`{addr}` is listed twice")));
            }
            dial.push(addr);
        }
        let named = self.dial_name(&def.upstream)?;
        let upstream = match named
            .as_ref()
            .and_then(|n| Some((n.pattern.exact()?, n.port)))
        {
            Some((host, port)) => Upstream::Name {
                host: host.to_owned(),
                port,
            },
            None => Upstream::Addr(self.socket_addr(&def.upstream, "upstream")?),
        };
        let credentials = match &def.credentials {
            Some(reference) => Some(self.name(reference, "credential")?),
            None => None,
        };
        let mut intercept_tls = Vec::with_capacity(def.intercept_tls.len());
        for spanned in &def.intercept_tls {
            let server = spanned.get_ref().to_ascii_lowercase();
            if !matches!(def.protocol, Protocol::Http | Protocol::S3 | Protocol::Mcp) {
                return Err(self.error(
                    spanned,
                    format!(
                        "`intercept_tls` is for `http`, `s3` and `mcp` backends; `{name}` is not \
                         one"
                    ),
                ));
            }
            if !is_dns_name(&server) {
                return Err(self.error(
                    spanned,
                    format!("`{server}` is not a DNS name (letters, digits, `-`, dots)"),
                ));
            }
            if intercept_tls.contains(&server) {
                return Err(self.error(spanned, format!("`{server}` is listed twice")));
            }
            intercept_tls.push(server);
        }
        let tls = match &def.tls {
            Some(tls) => Some(Tls {
                server_name: tls.server_name.clone(),
                ca_file: tls.ca_file.clone(),
                client_cert: self.client_cert(tls, &name, def.protocol)?,
            }),
            None => None,
        };
        let case_insensitive_paths = match &def.case_insensitive_paths {
            Some(flag) if def.protocol != Protocol::Http => {
                return Err(self.error(
                    flag,
                    format!("`case_insensitive_paths` is for `http` backends; `{name}` is not one"),
                ));
            }
            Some(flag) => *flag.get_ref(),
            None => false,
        };
        let s3 = self.s3_backend(def, &name)?;
        let mcp = self.mcp_backend(def, &name)?;
        Ok(Backend {
            name,
            protocol: def.protocol,
            dial,
            dial_names,
            upstream,
            credentials,
            intercept_tls,
            tls,
            case_insensitive_paths,
            s3,
            mcp,
        })
    }

    /// The skills and groups a rule names (`at`: where to point when it names none).
    fn subjects<T>(
        &self,
        name: &str,
        def: &RuleDef,
        at: &Spanned<T>,
        policy: &Policy,
    ) -> Result<(Vec<usize>, Vec<String>), PolicyError> {
        if def.skills.is_empty() && def.groups.is_empty() {
            return Err(self.error(
                at,
                format!("{name} names no skills and no groups: add `skills` or `groups`"),
            ));
        }
        let mut skills = Vec::new();
        for skill in &def.skills {
            let i = policy.skill_index(skill.get_ref()).ok_or_else(|| {
                self.error(
                    skill,
                    format!("{name} names unknown skill `{}`", skill.get_ref()),
                )
            })?;
            skills.push(i);
        }
        let mut groups = Vec::new();
        for group in &def.groups {
            if !policy.groups.contains(group.get_ref()) {
                return Err(self.error(
                    group,
                    format!(
                        "{name} names unknown group `{}`: list it in a skill's `groups` or in \
                         the top-level `groups`",
                        group.get_ref()
                    ),
                ));
            }
            groups.push(group.get_ref().clone());
        }
        Ok((skills, groups))
    }

    /// A `dns` rule: which names its skills may (or may not) resolve.
    fn dns_rule(&self, n: usize, def: &RuleDef, policy: &Policy) -> Result<DnsRule, PolicyError> {
        let name = match &def.name {
            Some(name) => self.name(name, "rule")?,
            None => format!("rule #{}", n + 1),
        };
        let Some(dns) = &def.dns else {
            return Err(self.error(
                &def.effect,
                format!("{name} needs a `backend` (or `dns`, for names the skills may resolve)"),
            ));
        };
        for (present, what) in [
            (def.sql.is_some(), "sql"),
            (def.http.is_some(), "http"),
            (def.s3.is_some(), "s3"),
            (def.mcp.is_some(), "mcp"),
            (def.mask.is_some(), "mask"),
        ] {
            if present {
                return Err(self.error(
                    dns,
                    format!("{name}: a `dns` rule has no `{what}`: names are all it covers"),
                ));
            }
        }
        let effect = *def.effect.get_ref();
        if !matches!(effect, Effect::Allow | Effect::Deny) {
            return Err(self.error(
                &def.effect,
                format!(
                    "{name}: a `dns` rule allows or denies; `{}` is not for names",
                    effect.as_str()
                ),
            ));
        }
        let (skills, groups) = self.subjects(&name, def, dns, policy)?;
        if dns.get_ref().is_empty() {
            return Err(self.error(dns, format!("{name}: `dns` lists no names")));
        }
        let mut names = Vec::new();
        for spanned in dns.get_ref() {
            let pattern = NamePattern::parse(spanned.get_ref()).ok_or_else(|| {
                self.error(
                    spanned,
                    format!(
                        "{name}: `{}` is not a host name or `*.` and a host name",
                        spanned.get_ref()
                    ),
                )
            })?;
            names.push(pattern);
        }
        let mut types = Vec::new();
        for spanned in &def.dns_types {
            let upper = spanned.get_ref().to_ascii_uppercase();
            if !KNOWN_TYPES.contains(&upper.as_str()) {
                return Err(self.error(
                    spanned,
                    format!(
                        "{name}: `{}` is not a record type this agent forwards ({})",
                        spanned.get_ref(),
                        KNOWN_TYPES.join(", ")
                    ),
                ));
            }
            types.push(upper);
        }
        Ok(DnsRule {
            id: n,
            name,
            line: self.line(dns.span().start),
            skills,
            groups,
            effect,
            mode: def.mode.unwrap_or_default(),
            names,
            types,
        })
    }

    /// A `dial` entry by name (`name:port`, `*.suffix:port`); `None` when it is an address.
    fn dial_name(&self, spanned: &Spanned<String>) -> Result<Option<DialName>, PolicyError> {
        let text = spanned.get_ref();
        if text.parse::<SocketAddr>().is_ok() {
            return Ok(None);
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Ok(None);
        };
        let (Some(pattern), Ok(port)) = (NamePattern::parse(host), port.parse::<u16>()) else {
            return Ok(None);
        };
        if port == 0 {
            return Err(self.error(spanned, format!("`{text}`: port 0 cannot be dialed")));
        }
        Ok(Some(DialName { pattern, port }))
    }

    /// A backend's client certificate and key: both or neither, and only where the agent
    /// itself speaks TLS upstream (a `tls` backend's TLS is the skill's own).
    fn client_cert(
        &self,
        tls: &TlsDef,
        backend: &str,
        protocol: Protocol,
    ) -> Result<Option<(String, String)>, PolicyError> {
        match (&tls.client_cert, &tls.client_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                if !matches!(
                    protocol,
                    Protocol::Http | Protocol::Postgres | Protocol::S3 | Protocol::Mcp
                ) {
                    return Err(self.error(
                        cert,
                        format!(
                            "`client_cert` is for `http`, `postgres` and `s3` backends, where the \
                             agent speaks TLS upstream; `{backend}` is `{}`",
                            protocol.as_str()
                        ),
                    ));
                }
                for (what, path) in [("client_cert", cert), ("client_key", key)] {
                    if path.get_ref().is_empty() {
                        return Err(self.error(path, format!("`{what}` is empty")));
                    }
                }
                Ok(Some((cert.get_ref().clone(), key.get_ref().clone())))
            }
            (Some(one), None) | (None, Some(one)) => Err(self.error(
                one,
                format!(
                    "backend `{backend}` names only one of `client_cert` and `client_key`: \
                     set both (the certificate chain and its private key, PEM files) or neither"
                ),
            )),
        }
    }

    fn rule(
        &self,
        n: usize,
        def: &RuleDef,
        backend_name: &Spanned<String>,
        policy: &Policy,
    ) -> Result<Rule, PolicyError> {
        if let Some(dns) = &def.dns {
            return Err(self.error(
                dns,
                "a rule with `dns` is about names, not a backend: drop `backend` or split the \
                 rule in two"
                    .to_owned(),
            ));
        }
        let name = match &def.name {
            Some(name) => self.name(name, "rule")?,
            None => format!("rule #{}", n + 1),
        };
        let (skills, groups) = self.subjects(&name, def, backend_name, policy)?;
        let backend = policy
            .backend_index(backend_name.get_ref())
            .ok_or_else(|| {
                self.error(
                    backend_name,
                    format!("{name} names unknown backend `{}`", backend_name.get_ref()),
                )
            })?;
        let protocol = policy.backends[backend].protocol;
        let effect = *def.effect.get_ref();
        let op = match (&def.sql, &def.http, protocol) {
            (None, None, _) if def.mcp.is_some() && def.s3.is_none() => {
                RuleOp::Mcp(self.mcp_op(&name, def, backend_name, protocol)?)
            }
            (_, _, _) if def.mcp.is_some() => {
                return Err(self.error(
                    &def.effect,
                    format!("{name} has `mcp` and `sql`, `http` or `s3`: keep one"),
                ));
            }
            (None, None, _) if def.s3.is_some() => {
                RuleOp::S3(self.s3_op(&name, def, backend_name, protocol)?)
            }
            (_, _, _) if def.s3.is_some() => {
                return Err(self.error(
                    &def.effect,
                    format!("{name} has `s3` and `sql` or `http`: keep one"),
                ));
            }
            (Some(_), Some(http), _) => {
                return Err(self.error(http, format!("{name} has both `sql` and `http`")));
            }
            (Some(sql), None, Protocol::Postgres) => RuleOp::Sql(self.sql_op(&name, sql)?),
            (None, Some(http), Protocol::Http) => RuleOp::Http(self.http_op(&name, http)?),
            (Some(sql), None, _) => {
                return Err(self.error(
                    sql,
                    format!(
                        "{name}: `sql` needs a postgres backend, `{}` is {}",
                        backend_name.get_ref(),
                        protocol.as_str()
                    ),
                ));
            }
            (None, Some(http), _) => {
                return Err(self.error(
                    http,
                    format!(
                        "{name}: `http` needs an http backend, `{}` is {}",
                        backend_name.get_ref(),
                        protocol.as_str()
                    ),
                ));
            }
            (None, None, Protocol::Http | Protocol::Postgres | Protocol::S3 | Protocol::Mcp)
                if effect != Effect::Deny =>
            {
                let hint = match protocol {
                    Protocol::Http => "an `http` operation (paths = [\"/**\"] grants every path)",
                    Protocol::S3 => "an `s3` operation (operations and objects)",
                    Protocol::Mcp => "an `mcp` operation (tools, resources, prompts or methods)",
                    _ => "a `sql` operation (kinds and objects)",
                };
                return Err(self.error(
                    &def.effect,
                    format!(
                        "{name} on {} backend `{}` needs {hint}",
                        protocol.as_str(),
                        backend_name.get_ref()
                    ),
                ));
            }
            (None, None, _) => RuleOp::Any,
        };
        let mask = match (&def.mask, effect) {
            (Some(mask), Effect::Mask) => {
                let mask = mask.get_ref();
                let misuse = mask.misuse.as_ref();
                let mut headers = Vec::with_capacity(mask.headers.len());
                for header in &mask.headers {
                    let value = header.get_ref().to_ascii_lowercase();
                    if protocol != Protocol::Http {
                        return Err(self.error(
                            header,
                            format!("{name}: `mask.headers` is for http backends"),
                        ));
                    }
                    let token = !value.is_empty()
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    if !token {
                        return Err(
                            self.error(header, format!("{name}: `{value}` is not a header name"))
                        );
                    }
                    headers.push(value);
                }
                let mask = Mask {
                    columns: mask.columns.clone(),
                    fields: mask.fields.clone(),
                    detectors: mask.detectors.clone(),
                    headers,
                    strategy: mask.strategy,
                    keep: mask.keep,
                    misuse: misuse.map_or_else(Misuse::default, |m| *m.get_ref()),
                };
                if let Some(misuse) = misuse
                    && (protocol != Protocol::Postgres || mask.columns.is_empty())
                {
                    return Err(self.error(
                        misuse,
                        format!("{name}: `mask.misuse` is for masked columns of postgres backends"),
                    ));
                }
                if mask.is_empty() && mask.headers.is_empty() {
                    return Err(self.error(
                        &def.effect,
                        format!("{name}: `mask` names no columns, fields, detectors or headers"),
                    ));
                }
                mask
            }
            (Some(mask), _) => {
                return Err(self.error(
                    mask,
                    format!("{name}: a `mask` section needs effect = \"mask\""),
                ));
            }
            (None, Effect::Mask) => {
                return Err(self.error(
                    &def.effect,
                    format!("{name}: effect \"mask\" needs a `mask` section (columns, fields, detectors)"),
                ));
            }
            (None, _) => Mask::default(),
        };
        if effect == Effect::Mask && !protocol.per_operation() {
            return Err(self.error(
                &def.effect,
                format!("{name}: masking needs an http, postgres, s3 or mcp backend"),
            ));
        }
        if let (Effect::Mask, RuleOp::Mcp(mcp)) = (effect, &op) {
            self.mcp_mask(&name, def, mcp, &mask)?;
        }
        if let (Effect::Mask, RuleOp::S3(s3)) = (effect, &op) {
            self.s3_mask(&name, def, s3, &mask)?;
        }
        let line = self.line(backend_name.span().start);
        Ok(Rule {
            id: n,
            name,
            line,
            skills,
            groups,
            backend,
            effect,
            mode: def.mode.unwrap_or_default(),
            op,
            mask,
        })
    }

    fn sql_op(&self, rule: &str, sql: &Spanned<SqlDef>) -> Result<SqlOp, PolicyError> {
        let def = sql.get_ref();
        let kinds = def.kinds.clone();
        if kinds.is_empty() {
            return Err(self.error(sql, format!("{rule}: `sql.kinds` is empty")));
        }
        let needs_objects = kinds.iter().any(|k| k.needs_objects());
        if needs_objects && def.objects.is_empty() {
            let what = if kinds.contains(&SqlKind::Execute) {
                "the tables, views or (for `execute`) functions"
            } else {
                "the tables or views"
            };
            return Err(self.error(
                sql,
                format!("{rule}: name {what} in `sql.objects` (\"*\" for all)"),
            ));
        }
        let mut objects = Vec::new();
        for object in &def.objects {
            let value = object.get_ref();
            // A function's unqualified name resolves to pg_catalog or public depending on
            // whether PostgreSQL has it built in: a grant says which it means.
            if kinds.contains(&SqlKind::Execute) && !value.contains('.') && value != "*" {
                let schema = if is_builtin_function(value) {
                    "pg_catalog"
                } else {
                    "public"
                };
                return Err(self.error(
                    object,
                    format!(
                        "{rule}: object `{value}` must be qualified in a rule that grants \
                         `execute`, like `{schema}.{value}`"
                    ),
                ));
            }
            objects.push(self.object(object)?);
        }
        Ok(SqlOp { kinds, objects })
    }

    fn object(&self, object: &Spanned<String>) -> Result<ObjectPattern, PolicyError> {
        let value = object.get_ref();
        let parts: Vec<&str> = value.split('.').collect();
        let ident = |s: &str| !s.is_empty() && !s.contains(['*', ' ', '"']);
        let pattern = match parts.as_slice() {
            ["*"] => Some(ObjectPattern::Any),
            [schema, "*"] if ident(schema) => Some(ObjectPattern::Schema((*schema).to_owned())),
            [schema, name] if ident(schema) && ident(name) => {
                Some(ObjectPattern::Exact(format!("{schema}.{name}")))
            }
            [name] if ident(name) && name.starts_with("pg_") => {
                Some(ObjectPattern::Exact(format!("pg_catalog.{name}")))
            }
            [name] if ident(name) => Some(ObjectPattern::Exact(format!("public.{name}"))),
            _ => None,
        };
        pattern.ok_or_else(|| {
            self.error(
                object,
                format!("object `{value}` must be `table`, `schema.table`, `schema.*` or `*`"),
            )
        })
    }

    fn http_op(&self, rule: &str, http: &Spanned<HttpDef>) -> Result<HttpOp, PolicyError> {
        let def = http.get_ref();
        if def.methods.is_empty() || def.paths.is_empty() {
            return Err(self.error(http, format!("{rule}: `http` needs `methods` and `paths`")));
        }
        let mut methods = Vec::new();
        for method in &def.methods {
            let value = method.get_ref();
            let token = !value.is_empty() && value.chars().all(|c| c.is_ascii_uppercase());
            if value != "*" && !token {
                return Err(self.error(
                    method,
                    format!(
                        "method `{value}` must be upper case (methods are case-sensitive) or `*`"
                    ),
                ));
            }
            methods.push(value.clone());
        }
        let mut paths = Vec::new();
        for path in &def.paths {
            paths.push(
                PathPattern::parse(path.get_ref())
                    .map_err(|why| self.error(path, format!("{rule}: {why}")))?,
            );
        }
        Ok(HttpOp {
            methods,
            paths,
            query: def
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            headers: def
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
        })
    }

    fn name(&self, name: &Spanned<String>, what: &str) -> Result<String, PolicyError> {
        let value = name.get_ref();
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !value.starts_with('.');
        if ok {
            Ok(value.clone())
        } else {
            Err(self.error(
                name,
                format!(
                    "{what} name `{value}` must be 1-64 characters of letters, digits, `-`, `_`, \
                     `.`, not starting with `.`"
                ),
            ))
        }
    }

    fn cgroup_path(&self, path: &Spanned<String>) -> Result<String, PolicyError> {
        let value = path.get_ref();
        let ok = !value.is_empty()
            && value.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && !part.chars().any(|c| c.is_control())
            });
        if ok {
            Ok(value.clone())
        } else {
            Err(self.error(
                path,
                format!(
                    "cgroup `{value}` must be a path relative to the skills cgroup, \
                     like `reporter` or `reporter.scope`, with no empty, `.` or `..` parts"
                ),
            ))
        }
    }

    fn socket_addr(&self, addr: &Spanned<String>, field: &str) -> Result<SocketAddr, PolicyError> {
        addr.get_ref().parse().map_err(|_| {
            self.error(
                addr,
                format!(
                    "`{field}` address `{}` is not `ip:port` (e.g. `127.0.0.2:5432`, \
                     `[::1]:443`){}",
                    addr.get_ref(),
                    if field == "dial" {
                        " or `name:port` (e.g. `orders.internal:443`, `*.s3.internal:443`)"
                    } else {
                        " or `name:port` (e.g. `orders.internal:443`)"
                    }
                ),
            )
        })
    }
}

fn sorted<T: Clone + Ord>(items: &[T]) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort();
    items
}

/// Builds the (skill, backend) and (group, backend) indexes.
fn index(policy: &mut Policy) {
    // Positions in `policy.rules`, not rule ids: `dns` rules take ids (file positions) too,
    // but live in `policy.dns_rules`.
    for (position, rule) in policy.rules.iter().enumerate() {
        let mut skills = rule.skills.clone();
        for (i, skill) in policy.skills.iter().enumerate() {
            if skill.groups.iter().any(|g| rule.groups.contains(g)) {
                skills.push(i);
            }
        }
        skills.sort_unstable();
        skills.dedup();
        for skill in skills {
            policy
                .by_skill
                .entry((skill, rule.backend))
                .or_default()
                .push(position);
        }
        for group in &rule.groups {
            policy
                .by_group
                .entry((group.clone(), rule.backend))
                .or_default()
                .push(position);
        }
    }
    // The indexes hold positions: keep them in file order.
    for rules in policy
        .by_skill
        .values_mut()
        .chain(policy.by_group.values_mut())
    {
        rules.sort_unstable();
        rules.dedup();
    }
}

/// A host name a certificate can be minted for: dot-separated labels of ASCII letters, digits
/// and inner hyphens, at most 253 characters; no wildcards, no IP addresses.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
