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
    /// a test reads does not satisfy it. With a `*` segment (`/to/*`), every element must
    /// satisfy it (and the `*` must meet an array or object).
    pub fn holds(&self, arguments: &Value) -> bool {
        match values_at(arguments, &self.pointer) {
            Some(values) => values.into_iter().all(|value| self.holds_for(value)),
            None => false,
        }
    }

    fn holds_for(&self, value: &Value) -> bool {
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
            exact_number(value).is_some_and(|n| match bound {
                Bound::Min(min) => n >= *min,
                Bound::Max(max) => n <= *max,
            })
        })
    }
}

impl ArgCondition {
    /// Whether it may hold for `arguments` as a server could read them: what a restriction
    /// (deny, approve, mask) is read with. A server may coerce (pydantic reads `"20000"` as an
    /// amount, `"yes"`, `"on"`, `"t"` or `1` as `true`, `"1_001"` as 1001), so a missing
    /// argument counts as holding, and so does one not exactly of the type a test reads,
    /// unless it is one a coercion is known for that definitely fails it: a plain decimal
    /// string (or a bool) where a number is read, pydantic's boolean words or 0 and 1 where a
    /// bool is.
    ///
    /// With a `*` segment, it may hold when it may for any element (or the `*` meets neither
    /// an array nor an object: the server may read that as one).
    pub fn may_hold(&self, arguments: &Value) -> bool {
        match values_at(arguments, &self.pointer) {
            Some(values) => values.into_iter().any(|value| self.may_hold_for(value)),
            None => true,
        }
    }

    fn may_hold_for(&self, value: &Value) -> bool {
        if let Some(equals) = &self.equals
            && !may_equal(value, equals)
        {
            return false;
        }
        if !self.one_of.is_empty() && !self.one_of.iter().any(|v| may_equal(value, v)) {
            return false;
        }
        // Prefixes and patterns read text: anything else may be turned into any.
        if let (Some(prefix), Value::String(t)) = (&self.prefix, value)
            && !t.starts_with(prefix.as_str())
        {
            return false;
        }
        if let (Some(pattern), Value::String(t)) = (&self.pattern, value)
            && !pattern.matches(t)
        {
            return false;
        }
        match loose_number(value) {
            Some(n) => self.bounds.iter().all(|bound| match bound {
                Bound::Min(min) => n >= *min,
                Bound::Max(max) => n <= *max,
            }),
            None => true,
        }
    }
}

/// The values `pointer` (RFC 6901, a `*` segment being every element of an array or every
/// value of an object) points at in `arguments`; `None`: a segment is missing, or a `*` meets
/// something else.
fn values_at<'a>(arguments: &'a Value, pointer: &str) -> Option<Vec<&'a Value>> {
    if pointer.is_empty() {
        return Some(vec![arguments]);
    }
    let mut values = vec![arguments];
    for segment in pointer.strip_prefix('/')?.split('/') {
        let mut next = Vec::new();
        for value in values {
            if segment == "*" {
                match value {
                    Value::Array(items) => next.extend(items.iter()),
                    Value::Object(map) => next.extend(map.values()),
                    _ => return None,
                }
            } else {
                let escaped = format!("/{segment}");
                next.push(value.pointer(&escaped)?);
            }
        }
        values = next;
    }
    Some(values)
}

/// `value` read as a number where a server coerces one, if it is known to read it so: a
/// number, a bool (pydantic's lax mode: 1 or 0) or a plain decimal string (`"20000"`,
/// `" -1.5e3 "`). Anything else (`"1_001"`, `"0x10"`, `"inf"`, `"٣"`) is not known: `None`.
fn loose_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(_) => exact_number(value),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        // More than 15 digits may not be read exactly as a float: not known.
        Value::String(s)
            if plain_decimal(s.trim()) && s.bytes().filter(u8::is_ascii_digit).count() <= 15 =>
        {
            s.trim().parse::<f64>().ok()
        }
        _ => None,
    }
    .filter(|n| n.is_finite())
}

/// The most an integer may be and still compare exactly as a float (2^53).
const EXACT: u64 = 1 << 53;

/// A number as a float, if it is one exactly: an integer beyond 2^53 is not (it would compare
/// as its neighbour: `9007199254740993 <= 9007199254740992`).
fn exact_number(value: &Value) -> Option<f64> {
    let Value::Number(n) = value else {
        return None;
    };
    if n.as_u64().is_some_and(|v| v > EXACT) || n.as_i64().is_some_and(|v| v.unsigned_abs() > EXACT)
    {
        return None;
    }
    n.as_f64()
}

/// `[+-]digits[.digits][e[+-]digits]`, ASCII only.
fn plain_decimal(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (s, None),
    };
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, fraction)) => digits(whole) && digits(fraction),
        None => digits(mantissa),
    };
    mantissa_ok && exponent.is_none_or(digits)
}

/// `value` read as a bool as pydantic reads one, if it is known to read it so.
fn loose_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => Some(false),
            Some(1.0) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
            "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Whether a server may read `value` as `target`: unless a known coercion says it does not,
/// a value not of `target`'s type may be read as anything.
fn may_equal(value: &Value, target: &Value) -> bool {
    match target {
        Value::Number(t) => loose_number(value).is_none_or(|n| Some(n) == t.as_f64()),
        Value::Bool(t) => loose_bool(value).is_none_or(|b| b == *t),
        Value::String(t) => match value {
            Value::String(s) => s == t,
            _ => true,
        },
        Value::Array(t) => match value {
            Value::Array(items) => {
                items.len() == t.len() && items.iter().zip(t).all(|(v, t)| may_equal(v, t))
            }
            _ => true,
        },
        Value::Object(t) => match value {
            Value::Object(map) => {
                map.len() == t.len()
                    && map
                        .iter()
                        .all(|(k, v)| t.get(k).is_some_and(|t| may_equal(v, t)))
            }
            _ => true,
        },
        Value::Null => true,
    }
}

/// JSON equality, numbers by value (`1` and `1.0` are the same amount to a server).
/// Integers compare exactly; an integer beyond 2^53 equals no float.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let int = |n: &serde_json::Number| {
                n.as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
            };
            match (int(x), int(y)) {
                (Some(x), Some(y)) => x == y,
                _ => match (exact_number(a), exact_number(b)) {
                    (Some(x), Some(y)) => x == y,
                    _ => false,
                },
            }
        }
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

    #[test]
    fn numbers_beyond_2_53_are_not_compared_as_floats() {
        let cond = |bounds: Vec<Bound>, one_of: Vec<Value>| ArgCondition {
            pointer: "/id".to_owned(),
            equals: None,
            one_of,
            prefix: None,
            pattern: None,
            bounds,
        };
        // Found by review: bounds compared via f64, so 2^53 + 1 passed max = 2^53.
        let max = cond(vec![Bound::Max(9007199254740992.0)], Vec::new());
        assert!(max.holds(&json!({"id": 9007199254740992_u64})));
        assert!(!max.holds(&json!({"id": 9007199254740993_u64})));
        let min = cond(vec![Bound::Min(9007199254740992.0)], Vec::new());
        assert!(min.may_hold(&json!({"id": 9007199254740993_u64})));
        assert!(min.may_hold(&json!({"id": "9007199254740993"})));
        let one = cond(Vec::new(), vec![json!(9007199254740992_u64)]);
        assert!(one.holds(&json!({"id": 9007199254740992_u64})));
        assert!(!one.holds(&json!({"id": 9007199254740993_u64})));
        let small = cond(Vec::new(), vec![json!(50)]);
        assert!(small.holds(&json!({"id": 50.0})), "small numbers by value");
    }

    #[test]
    fn a_star_segment_reads_every_element() {
        let mut corp = ArgCondition {
            pointer: "/to/*".to_owned(),
            equals: None,
            one_of: Vec::new(),
            prefix: None,
            pattern: Some(NameGlob::new("*@corp.com")),
            bounds: Vec::new(),
        };
        // Found by review: `/to/0` checked the first recipient only.
        assert!(corp.holds(&json!({"to": ["a@corp.com", "b@corp.com"]})));
        assert!(!corp.holds(&json!({"to": ["a@corp.com", "x@evil.com"]})));
        assert!(!corp.holds(&json!({"to": "a@corp.com"})), "not a list");
        assert!(!corp.holds(&json!({})));
        assert!(corp.may_hold(&json!({"to": ["x@evil.com", "a@corp.com"]})));
        assert!(!corp.may_hold(&json!({"to": ["x@evil.com"]})));
        assert!(corp.may_hold(&json!({"to": "a@corp.com"})), "not a list");
        corp.pointer = "/to/*/address".to_owned();
        assert!(corp.holds(&json!({"to": [{"address": "a@corp.com"}]})));
        assert!(!corp.holds(&json!({"to": [{"address": "a@corp.com"}, {"name": "x"}]})));
        corp.pointer = "/to/0".to_owned();
        assert!(
            corp.holds(&json!({"to": ["a@corp.com", "x@evil.com"]})),
            "as before"
        );
    }

    #[test]
    fn restrictions_count_every_coercion_a_server_may_make() {
        let cond = |pointer: &str| ArgCondition {
            pointer: pointer.to_owned(),
            equals: None,
            one_of: Vec::new(),
            prefix: None,
            pattern: None,
            bounds: Vec::new(),
        };
        // Found by review: deny {equals = true} on /force missed what pydantic reads as True.
        let mut force = cond("/force");
        force.equals = Some(json!(true));
        for yes in [
            json!(true),
            json!("yes"),
            json!("on"),
            json!("1"),
            json!("t"),
            json!("Y"),
            json!(" TRUE "),
            json!(1),
            json!(1.0),
        ] {
            assert!(force.may_hold(&json!({ "force": yes })), "{yes}");
            assert!(
                !force.holds(&json!({ "force": yes })) || yes == json!(true),
                "grants stay strict: {yes}"
            );
        }
        for no in [
            json!(false),
            json!("no"),
            json!("off"),
            json!("0"),
            json!(0),
        ] {
            assert!(!force.may_hold(&json!({ "force": no })), "{no}");
        }
        // A value no known coercion reads: it may be read as anything.
        for unknown in [
            json!("maybe"),
            json!(2),
            json!(null),
            json!([true]),
            json!({}),
        ] {
            assert!(force.may_hold(&json!({ "force": unknown })), "{unknown}");
        }
        // Found by review: deny one_of = [1001] missed "1_001" (pydantic reads 1001).
        let mut account = cond("/account_id");
        account.one_of = vec![json!(1001)];
        for hit in [
            json!(1001),
            json!("1001"),
            json!(" 1001.0 "),
            json!("1_001"),
            json!("0x3e9"),
            json!("1e3_1"),
            json!(null),
            json!([1001]),
        ] {
            assert!(account.may_hold(&json!({ "account_id": hit })), "{hit}");
        }
        for miss in [json!(1002), json!("1002"), json!("1.002e3"), json!(true)] {
            assert!(!account.may_hold(&json!({ "account_id": miss })), "{miss}");
        }
        // Bounds: bools are 0 and 1, unknown strings may be anything.
        let mut large = cond("/amount");
        large.bounds = vec![Bound::Min(100.0)];
        assert!(!large.may_hold(&json!({"amount": true})));
        assert!(large.may_hold(&json!({"amount": "1_000"})));
        assert!(large.may_hold(&json!({"amount": "Infinity"})));
        assert!(!large.may_hold(&json!({"amount": "99"})));
        // Text tests on a value that is not text: a server may turn it into any text.
        let mut role = cond("/role");
        role.equals = Some(json!("admin"));
        assert!(role.may_hold(&json!({"role": 5})));
        assert!(!role.may_hold(&json!({"role": "user"})));
        let mut path = cond("/path");
        path.prefix = Some("/etc".to_owned());
        assert!(path.may_hold(&json!({"path": ["/etc/passwd"]})));
        assert!(!path.may_hold(&json!({"path": "/home"})));
    }
}
