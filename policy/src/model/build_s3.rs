//! The `s3` parts of the policy file: a backend's region and addressing, a rule's operations
//! and objects.

use toml::Spanned;

use super::build::Builder;
use super::{Mask, Protocol, S3Backend, S3Op};
use crate::error::PolicyError;
use crate::file::{BackendDef, RuleDef};
use crate::s3::{OPERATIONS, ObjectGlob, UNKNOWN};

impl Builder<'_> {
    /// An `s3` backend's signing settings; `region` and `addressing` on other backends are
    /// refused.
    pub(super) fn s3_backend(
        &self,
        def: &BackendDef,
        name: &str,
    ) -> Result<Option<S3Backend>, PolicyError> {
        if def.protocol != Protocol::S3 {
            if let Some(at) = def.region.as_ref().or(def.addressing.as_ref()) {
                return Err(self.error(
                    at,
                    format!("`region` and `addressing` are for `s3` backends; `{name}` is not one"),
                ));
            }
            return Ok(None);
        }
        let Some(region) = &def.region else {
            return Err(self.error(
                &def.name,
                format!(
                    "s3 backend `{name}` needs `region` (the region the agent signs for, e.g. \
                     \"us-east-1\")"
                ),
            ));
        };
        let value = region.get_ref();
        let ok = !value.is_empty()
            && value.len() <= 32
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(self.error(
                region,
                format!("region `{value}` must be lower-case letters, digits and `-`"),
            ));
        }
        if let Some(addressing) = &def.addressing
            && addressing.get_ref() != "path"
        {
            return Err(self.error(
                addressing,
                format!(
                    "addressing `{}` is not supported: only `path` (`/bucket/key`); configure \
                     the skill's client for path-style requests (boto3: \
                     `Config(s3={{\"addressing_style\": \"path\"}})`)",
                    addressing.get_ref()
                ),
            ));
        }
        if def.credentials.is_none() {
            return Err(self.error(
                &def.name,
                format!(
                    "s3 backend `{name}` needs `credentials` (an `aws` credential the agent \
                     signs with)"
                ),
            ));
        }
        Ok(Some(S3Backend {
            region: value.clone(),
        }))
    }

    /// A rule's `s3` operation: known operation names (or `unknown`, or `*`) on object
    /// patterns.
    pub(super) fn s3_op(
        &self,
        rule: &str,
        def: &RuleDef,
        backend: &Spanned<String>,
        protocol: Protocol,
    ) -> Result<S3Op, PolicyError> {
        let s3 = def.s3.as_ref().expect("called for rules with `s3`");
        if protocol != Protocol::S3 {
            return Err(self.error(
                s3,
                format!(
                    "{rule}: `s3` needs an s3 backend, `{}` is {}",
                    backend.get_ref(),
                    protocol.as_str()
                ),
            ));
        }
        let s3_def = s3.get_ref();
        if s3_def.operations.is_empty() || s3_def.objects.is_empty() {
            return Err(self.error(
                s3,
                format!("{rule}: `s3` needs `operations` and `objects` (\"*\" for all)"),
            ));
        }
        let mut operations = Vec::new();
        for operation in &s3_def.operations {
            let value = operation.get_ref();
            if value != "*" && value != UNKNOWN && !OPERATIONS.contains(&value.as_str()) {
                let close = OPERATIONS
                    .iter()
                    .find(|o| o.eq_ignore_ascii_case(value))
                    .map_or_else(String::new, |o| format!(" (did you mean `{o}`?)"));
                return Err(self.error(
                    operation,
                    format!(
                        "{rule}: `{value}` is not an S3 operation the agent knows{close}; known: \
                         {}, `unknown` or `*`",
                        OPERATIONS.join(", ")
                    ),
                ));
            }
            operations.push(value.clone());
        }
        let mut objects = Vec::new();
        for object in &s3_def.objects {
            objects.push(
                ObjectGlob::parse(object.get_ref())
                    .map_err(|why| self.error(object, format!("{rule}: {why}")))?,
            );
        }
        Ok(S3Op {
            operations,
            objects,
        })
    }

    /// A mask on an `s3` rule masks objects read whole: GetObject only, by JSON field or
    /// detector (an object is no table, and has no headers to drop).
    pub(super) fn s3_mask(
        &self,
        rule: &str,
        def: &RuleDef,
        op: &S3Op,
        mask: &Mask,
    ) -> Result<(), PolicyError> {
        let at = def.mask.as_ref().expect("a mask rule has a mask");
        if let Some(other) = op.operations.iter().find(|o| *o != "GetObject") {
            return Err(self.error(
                at,
                format!(
                    "{rule}: an s3 mask applies to GetObject only (the objects read), not \
                     `{other}`"
                ),
            ));
        }
        if !mask.columns.is_empty() || !mask.masks_body() {
            return Err(self.error(
                at,
                format!("{rule}: an s3 mask names JSON `fields` or `detectors`, not `columns`"),
            ));
        }
        Ok(())
    }
}
