//! The `mcp` parts of the policy file: a backend's tool pinning, a rule's methods, tools,
//! resources, prompts and argument conditions.

use toml::Spanned;

use super::build::Builder;
use super::{Mask, McpBackend, McpOp, Protocol};
use crate::decide::Effect;
use crate::error::PolicyError;
use crate::file::{BackendDef, RuleDef};
use crate::mcp::{ArgCondition, Bound, NameGlob};

/// Methods whose calls a mask can apply to (their answers carry content).
const MASKABLE: &[&str] = &["tools/call", "resources/read", "prompts/get"];

impl Builder<'_> {
    /// An `mcp` backend's pinning; `mcp_*` on other backends is refused.
    pub(super) fn mcp_backend(
        &self,
        def: &BackendDef,
        name: &str,
    ) -> Result<Option<McpBackend>, PolicyError> {
        if def.protocol != Protocol::Mcp {
            if let Some(at) = &def.mcp_tool_changed {
                return Err(self.error(
                    at,
                    format!("`mcp_tool_changed` is for `mcp` backends; `{name}` is not one"),
                ));
            }
            if let Some(at) = &def.mcp_path {
                return Err(self.error(
                    at,
                    format!("`mcp_path` is for `mcp` backends; `{name}` is not one"),
                ));
            }
            if let Some(at) = &def.mcp_pins {
                return Err(self.error(
                    at,
                    format!("`mcp_pins` is for `mcp` backends; `{name}` is not one"),
                ));
            }
            return Ok(None);
        }
        let tool_changed = match &def.mcp_tool_changed {
            None => Effect::Deny,
            Some(value) => match value.get_ref().as_str() {
                "deny" => Effect::Deny,
                "approve" => Effect::Approve,
                other => {
                    return Err(self.error(
                        value,
                        format!("mcp_tool_changed `{other}`: say \"approve\" or \"deny\""),
                    ));
                }
            },
        };
        let path = match &def.mcp_path {
            None => "/mcp".to_owned(),
            Some(path) => {
                let value = path.get_ref();
                let ok = value.starts_with('/')
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"?#%\\".contains(&b));
                if !ok {
                    return Err(self.error(
                        path,
                        format!(
                            "mcp_path `{value}` must be a plain path (`/mcp`): no query, \
                             fragment or escapes"
                        ),
                    ));
                }
                value.clone()
            }
        };
        let mut pins = Vec::new();
        if let Some(map) = &def.mcp_pins {
            for (tool, fingerprint) in map.get_ref() {
                let hex = fingerprint.len() == 64
                    && fingerprint
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !hex {
                    return Err(self.error(
                        map,
                        format!(
                            "mcp_pins: `{tool}` = `{fingerprint}` is not a SHA-256 fingerprint \
                             (64 lower-case hex digits, as `skillgate policy explain --mcp` and \
                             the records show)"
                        ),
                    ));
                }
                pins.push((tool.clone(), fingerprint.clone()));
            }
        }
        Ok(Some(McpBackend {
            path,
            tool_changed,
            pins,
        }))
    }

    /// A rule's `mcp` operation.
    pub(super) fn mcp_op(
        &self,
        rule: &str,
        def: &RuleDef,
        backend: &Spanned<String>,
        protocol: Protocol,
    ) -> Result<McpOp, PolicyError> {
        let mcp = def.mcp.as_ref().expect("called for rules with `mcp`");
        if protocol != Protocol::Mcp {
            return Err(self.error(
                mcp,
                format!(
                    "{rule}: `mcp` needs an mcp backend, `{}` is {}",
                    backend.get_ref(),
                    protocol.as_str()
                ),
            ));
        }
        let m = mcp.get_ref();
        let globs = |items: &[Spanned<String>], what: &str| -> Result<Vec<NameGlob>, PolicyError> {
            items
                .iter()
                .map(|item| {
                    if item.get_ref().is_empty() {
                        Err(self.error(item, format!("{rule}: an empty name in `{what}`")))
                    } else {
                        Ok(NameGlob::new(item.get_ref()))
                    }
                })
                .collect()
        };
        let tools = globs(&m.tools, "tools")?;
        let resources = globs(&m.resources, "resources")?;
        let prompts = globs(&m.prompts, "prompts")?;
        let mut methods: Vec<String> = Vec::new();
        for method in &m.methods {
            let value = method.get_ref();
            if value.is_empty() || value.contains(char::is_whitespace) {
                return Err(self.error(method, format!("{rule}: `{value}` is not a method name")));
            }
            methods.push(value.clone());
        }
        // The methods the names imply, when none are given.
        if methods.is_empty() {
            for (named, method) in [
                (!tools.is_empty(), "tools/call"),
                (!resources.is_empty(), "resources/read"),
                (!prompts.is_empty(), "prompts/get"),
            ] {
                if named {
                    methods.push(method.to_owned());
                }
            }
        }
        if methods.is_empty() {
            return Err(self.error(
                mcp,
                format!(
                    "{rule}: `mcp` names no `methods`, `tools`, `resources` or `prompts` (e.g. \
                     tools = [\"create_refund\"])"
                ),
            ));
        }
        for (method, names, what) in [
            ("tools/call", &tools, "tools"),
            ("resources/read", &resources, "resources"),
            ("prompts/get", &prompts, "prompts"),
        ] {
            if methods.iter().any(|m| m == method) && names.is_empty() {
                return Err(self.error(
                    mcp,
                    format!("{rule}: `{method}` needs `{what}` (\"*\" for all)"),
                ));
            }
            if !names.is_empty() && !methods.iter().any(|m| m == method) {
                return Err(self.error(
                    mcp,
                    format!("{rule}: `{what}` is for `{method}`, which `methods` does not name"),
                ));
            }
        }
        let mut arguments = Vec::new();
        for arg in &m.arguments {
            if tools.is_empty() {
                return Err(self.error(arg, format!("{rule}: `arguments` is for tool calls")));
            }
            arguments.push(self.arg_condition(rule, arg)?);
        }
        if m.only_named_arguments && (tools.is_empty() || arguments.is_empty()) {
            return Err(self.error(
                mcp,
                format!(
                    "{rule}: `only_named_arguments` needs `tools` and the `arguments` they may \
                     take"
                ),
            ));
        }
        Ok(McpOp {
            methods,
            tools,
            resources,
            prompts,
            arguments,
            only_named_arguments: m.only_named_arguments,
        })
    }

    fn arg_condition(
        &self,
        rule: &str,
        arg: &Spanned<crate::file::ArgDef>,
    ) -> Result<ArgCondition, PolicyError> {
        let def = arg.get_ref();
        let fail = |why: String| self.error(arg, format!("{rule}: {why}"));
        if !(def.pointer.is_empty() || def.pointer.starts_with('/')) {
            return Err(fail(format!(
                "`{}` is not a JSON pointer (`/amount`, `/to/0`; \"\" is the whole arguments)",
                def.pointer
            )));
        }
        let json = |value: &toml::Value| {
            serde_json::to_value(value).map_err(|err| fail(format!("`{value}`: {err}")))
        };
        let equals = def.equals.as_ref().map(json).transpose()?;
        let one_of = def.one_of.iter().map(json).collect::<Result<Vec<_>, _>>()?;
        let mut bounds = Vec::new();
        for (value, bound) in [
            (def.min, def.min.map(Bound::Min)),
            (def.max, def.max.map(Bound::Max)),
        ] {
            if let (Some(value), Some(bound)) = (value, bound) {
                if !value.is_finite() {
                    return Err(fail(format!("`{value}` is not a finite bound")));
                }
                bounds.push(bound);
            }
        }
        if equals.is_none()
            && one_of.is_empty()
            && def.prefix.is_none()
            && def.pattern.is_none()
            && bounds.is_empty()
        {
            return Err(fail(format!(
                "the condition on `{}` tests nothing: give equals, one_of, prefix, pattern, min \
                 or max",
                def.pointer
            )));
        }
        Ok(ArgCondition {
            pointer: def.pointer.clone(),
            equals,
            one_of,
            prefix: def.prefix.clone(),
            pattern: def.pattern.as_deref().map(NameGlob::new),
            bounds,
        })
    }

    /// A mask on an `mcp` rule masks answers with content: tool results, resource contents,
    /// prompts; by JSON field or detector.
    pub(super) fn mcp_mask(
        &self,
        rule: &str,
        def: &RuleDef,
        op: &McpOp,
        mask: &Mask,
    ) -> Result<(), PolicyError> {
        let at = def.mask.as_ref().expect("a mask rule has a mask");
        if let Some(other) = op.methods.iter().find(|m| !MASKABLE.contains(&m.as_str())) {
            return Err(self.error(
                at,
                format!(
                    "{rule}: an mcp mask applies to {} answers, not `{other}`",
                    MASKABLE.join(", ")
                ),
            ));
        }
        if !mask.columns.is_empty() || !mask.masks_body() {
            return Err(self.error(
                at,
                format!("{rule}: an mcp mask names JSON `fields` or `detectors`, not `columns`"),
            ));
        }
        Ok(())
    }
}
