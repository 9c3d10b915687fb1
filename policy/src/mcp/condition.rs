//! What an `mcp` rule names: tools, prompts and resource URIs by glob, and conditions on a tool
//! call's arguments by JSON pointer (RFC 6901).

use serde_json::Value;

/// A glob: `*` matches any run of characters (`/` included), `?` one character, anything else
/// itself. Names and URIs are compared exactly (case matters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NameGlob(String);

impl NameGlob {
    pub fn new(pattern: &str) -> Self {
        Self(pattern.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, text: &str) -> bool {
        let pattern: Vec<char> = self.0.chars().collect();
        let text: Vec<char> = text.chars().collect();
        // Iterative wildcard matching, backtracking only to the last `*` (linear in practice,
        // quadratic at worst; names are short).
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
                p += 1;
                t += 1;
            } else if p < pattern.len() && pattern[p] == '*' {
                star = Some((p, t));
                p += 1;
            } else if let Some((sp, st)) = star {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        pattern[p..].iter().all(|c| *c == '*')
    }
}

/// A numeric bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Min(f64),
    Max(f64),
}

/// A condition on the argument at `pointer`: every test given must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct ArgCondition {
    /// An RFC 6901 JSON pointer into the arguments (`/amount`, `/to/0`).
    pub pointer: String,
    pub equals: Option<Value>,
    pub one_of: Vec<Value>,
    pub prefix: Option<String>,
    pub pattern: Option<NameGlob>,
    pub bounds: Vec<Bound>,
}

impl ArgCondition {
    /// Whether it holds for `arguments`. An argument that is missing or of another type than
    /// a test reads does not satisfy it.
    pub fn holds(&self, arguments: &Value) -> bool {
        let Some(value) = arguments.pointer(&self.pointer) else {
            return false;
        };
        if let Some(equals) = &self.equals
            && !same(value, equals)
        {
            return false;
        }
        if !self.one_of.is_empty() && !self.one_of.iter().any(|v| same(value, v)) {
            return false;
        }
        if let Some(prefix) = &self.prefix
            && !value
                .as_str()
                .is_some_and(|s| s.starts_with(prefix.as_str()))
        {
            return false;
        }
        if let Some(pattern) = &self.pattern
            && !value.as_str().is_some_and(|s| pattern.matches(s))
        {
            return false;
        }
        self.bounds.iter().all(|bound| {
            value.as_f64().is_some_and(|n| match bound {
                Bound::Min(min) => n >= *min,
                Bound::Max(max) => n <= *max,
            })
        })
    }
}

impl ArgCondition {
    /// Whether it may hold for `arguments` as a server could read them: what a restriction
    /// (deny, approve, mask) is read with. A server may coerce (`"20000"` is an amount to
    /// pydantic, `5` a string to some), so a missing argument, or one a test cannot read as
    /// it is, counts as holding unless read loosely it definitely does not.
    pub fn may_hold(&self, arguments: &Value) -> bool {
        let Some(value) = arguments.pointer(&self.pointer) else {
            return true;
        };
        let text = match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        let number = match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
            _ => None,
        };
        let loosely_same = |v: &Value| {
            same(value, v)
                || match (v, &text, number) {
                    (Value::Number(n), _, Some(x)) => n.as_f64() == Some(x),
                    (Value::String(s), Some(t), _) => s == t,
                    _ => false,
                }
        };
        if let Some(equals) = &self.equals
            && text.is_some()
            && !loosely_same(equals)
        {
            return false;
        }
        if !self.one_of.is_empty() && text.is_some() && !self.one_of.iter().any(loosely_same) {
            return false;
        }
        if let (Some(prefix), Some(t)) = (&self.prefix, &text)
            && !t.starts_with(prefix.as_str())
        {
            return false;
        }
        if let (Some(pattern), Some(t)) = (&self.pattern, &text)
            && !pattern.matches(t)
        {
            return false;
        }
        match number {
            Some(n) => self.bounds.iter().all(|bound| match bound {
                Bound::Min(min) => n >= *min,
                Bound::Max(max) => n <= *max,
            }),
            None => true,
        }
    }
}

/// JSON equality, numbers by value (`1` and `1.0` are the same amount to a server).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        let g = NameGlob::new;
        assert!(g("file:///docs/*").matches("file:///docs/a/b.md"));
        assert!(!g("file:///docs/*").matches("file:///etc/passwd"));
        assert!(g("get_*").matches("get_"));
        assert!(g("a?c").matches("abc") && !g("a?c").matches("ac"));
        assert!(g("*").matches(""));
        assert!(g("*a*b").matches("xxaxxb") && !g("*a*b").matches("xxbxxa"));
        assert!(!g("refund").matches("Refund"));
    }

    #[test]
    fn conditions() {
        let cond = |pointer: &str| ArgCondition {
            pointer: pointer.to_owned(),
            equals: None,
            one_of: Vec::new(),
            prefix: None,
            pattern: None,
            bounds: Vec::new(),
        };
        let args = json!({"amount": 50, "currency": "EUR", "to": {"iban": "DE00"}});
        let mut max = cond("/amount");
        max.bounds = vec![Bound::Max(100.0)];
        assert!(max.holds(&args));
        assert!(!max.holds(&json!({"amount": 101})));
        assert!(
            !max.holds(&json!({"amount": "50"})),
            "a string is not a number"
        );
        assert!(!max.holds(&json!({})), "missing");
        let mut one = cond("/currency");
        one.one_of = vec![json!("EUR"), json!("USD")];
        assert!(one.holds(&args) && !one.holds(&json!({"currency": "GBP"})));
        let mut prefix = cond("/to/iban");
        prefix.prefix = Some("DE".to_owned());
        assert!(prefix.holds(&args) && !prefix.holds(&json!({"to": {"iban": "FR1"}})));
        let mut eq = cond("/amount");
        eq.equals = Some(json!(50.0));
        assert!(eq.holds(&args));
    }

    #[test]
    fn restrictions_read_arguments_as_loosely_as_a_server_may() {
        let mut min = ArgCondition {
            pointer: "/amount".to_owned(),
            equals: None,
            one_of: Vec::new(),
            prefix: None,
            pattern: None,
            bounds: vec![Bound::Min(10000.0)],
        };
        // Found by review: a deny on large amounts did not cover `"20000"`, which pydantic
        // reads as 20000.
        assert!(!min.holds(&json!({"amount": "20000"})));
        assert!(min.may_hold(&json!({"amount": "20000"})));
        assert!(min.may_hold(&json!({"amount": 20000})));
        assert!(!min.may_hold(&json!({"amount": "5"})));
        assert!(!min.may_hold(&json!({"amount": 5})));
        assert!(
            min.may_hold(&json!({})),
            "missing: the server may default it"
        );
        assert!(min.may_hold(&json!({"amount": [1]})), "unreadable");
        min.bounds.clear();
        min.one_of = vec![json!(7)];
        assert!(min.may_hold(&json!({"amount": "7"})));
        assert!(!min.may_hold(&json!({"amount": "8"})));
    }
}
