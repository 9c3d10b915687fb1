//! Per-skill counts of operations (HTTP requests, SQL statements, S3 operations, MCP calls:
//! allowed, denied, held, values masked)
//! and their latency, kept by the agent for `skillgate stats` (through the admin API) and
//! exported as Prometheus metrics.

use crate::lock::Locked as _;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latency buckets: bucket `i` holds durations up to 2^(i/4) microseconds (19% apart).
const BUCKETS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    pub skill: String,
    pub backend: String,
    /// `http`, `sql`, `s3` or `mcp`.
    pub kind: String,
}

struct Counts {
    allowed: u64,
    denied: u64,
    held: u64,
    masked: u64,
    latency: [u64; BUCKETS],
    latency_sum_us: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            allowed: 0,
            denied: 0,
            held: 0,
            masked: 0,
            latency: [0; BUCKETS],
            latency_sum_us: 0,
        }
    }
}

/// What `skillgate stats` shows for one skill, backend and kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpReport {
    #[serde(flatten)]
    pub key: Key,
    pub allowed: u64,
    pub denied: u64,
    pub held: u64,
    pub masked_values: u64,
    /// Operations with a measured latency (answered by the backend).
    pub answered: u64,
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
}

#[derive(Default)]
pub struct OpStats(Mutex<BTreeMap<Key, Counts>>);

/// How an operation was decided.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Allowed,
    Denied,
    /// Held for approval (counted once, whatever the answer).
    Held,
}

impl Outcome {
    /// How the policy's effect is carried out (a mask is an allow).
    pub fn of(effect: skillgate_policy::Effect) -> Self {
        use skillgate_policy::Effect;
        match effect {
            Effect::Deny => Self::Denied,
            Effect::Approve => Self::Held,
            Effect::Allow | Effect::Mask => Self::Allowed,
        }
    }

    /// The decision as logged and recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allow",
            Self::Denied => "deny",
            Self::Held => "approve",
        }
    }
}

impl OpStats {
    fn with(&self, skill: &str, backend: &str, kind: &str, f: impl FnOnce(&mut Counts)) {
        let key = Key {
            skill: skill.to_owned(),
            backend: backend.to_owned(),
            kind: kind.to_owned(),
        };
        let mut map = self.0.locked();
        f(map.entry(key).or_default());
    }

    pub fn decided(&self, skill: &str, backend: &str, kind: &str, decided: Outcome) {
        self.with(skill, backend, kind, |c| match decided {
            Outcome::Allowed => c.allowed += 1,
            Outcome::Denied => c.denied += 1,
            Outcome::Held => c.held += 1,
        });
    }

    /// An answered operation: its latency (decision to answer) and the values masked in it.
    pub fn answered(
        &self,
        skill: &str,
        backend: &str,
        kind: &str,
        latency: Duration,
        masked: usize,
    ) {
        self.with(skill, backend, kind, |c| {
            c.latency[bucket(latency)] += 1;
            c.latency_sum_us += latency.as_micros() as u64;
            c.masked += masked as u64;
        });
    }

    /// Prometheus text: `skillgate_operations_total{skill,backend,kind,decision}`,
    /// `skillgate_masked_values_total` and the `skillgate_operation_seconds` histogram (buckets
    /// at powers of two microseconds).
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let map = self.0.locked();
        let labels = |k: &Key| {
            let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
            format!(
                "skill=\"{}\",backend=\"{}\",kind=\"{}\"",
                esc(&k.skill),
                esc(&k.backend),
                esc(&k.kind)
            )
        };
        let _ = writeln!(
            out,
            "# HELP skillgate_operations Operations decided (HTTP requests, SQL statements, S3 operations, MCP calls), by skill, backend, kind and decision\n# TYPE skillgate_operations counter"
        );
        for (key, c) in map.iter() {
            for (decision, n) in [
                ("allowed", c.allowed),
                ("denied", c.denied),
                ("held", c.held),
            ] {
                let _ = writeln!(
                    out,
                    "skillgate_operations_total{{{},decision=\"{decision}\"}} {n}",
                    labels(key)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP skillgate_masked_values Values masked in responses and result rows\n# TYPE skillgate_masked_values counter"
        );
        for (key, c) in map.iter() {
            let _ = writeln!(
                out,
                "skillgate_masked_values_total{{{}}} {}",
                labels(key),
                c.masked
            );
        }
        let _ = writeln!(
            out,
            "# HELP skillgate_operation_seconds Time from a decision to the backend's answer\n# TYPE skillgate_operation_seconds histogram"
        );
        for (key, c) in map.iter() {
            let mut cumulative = 0;
            for (i, n) in c.latency.iter().enumerate() {
                cumulative += n;
                if i % 4 == 0 && i < 4 * 32 {
                    let le = 2f64.powi(i as i32 / 4) / 1e6;
                    let _ = writeln!(
                        out,
                        "skillgate_operation_seconds_bucket{{{},le=\"{le}\"}} {cumulative}",
                        labels(key)
                    );
                }
            }
            let _ = writeln!(
                out,
                "skillgate_operation_seconds_bucket{{{},le=\"+Inf\"}} {cumulative}",
                labels(key)
            );
            let _ = writeln!(
                out,
                "skillgate_operation_seconds_count{{{}}} {cumulative}",
                labels(key)
            );
            let _ = writeln!(
                out,
                "skillgate_operation_seconds_sum{{{}}} {}",
                labels(key),
                c.latency_sum_us as f64 / 1e6
            );
        }
    }

    pub fn report(&self) -> Vec<OpReport> {
        let map = self.0.locked();
        map.iter()
            .map(|(key, c)| {
                let answered = c.latency.iter().sum();
                OpReport {
                    key: key.clone(),
                    allowed: c.allowed,
                    denied: c.denied,
                    held: c.held,
                    masked_values: c.masked,
                    answered,
                    p50_us: percentile(&c.latency, answered, 0.50),
                    p90_us: percentile(&c.latency, answered, 0.90),
                    p99_us: percentile(&c.latency, answered, 0.99),
                }
            })
            .collect()
    }
}

fn bucket(latency: Duration) -> usize {
    let us = latency.as_micros().max(1) as f64;
    ((us.log2() * 4.0).ceil() as usize).min(BUCKETS - 1)
}

/// The upper bound of the bucket holding the `q` quantile.
fn percentile(latency: &[u64; BUCKETS], total: u64, q: f64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in latency.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(2f64.powf(i as f64 / 4.0).round() as u64);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_log_buckets() {
        let stats = OpStats::default();
        for us in 1..=100u64 {
            stats.answered("s", "b", "sql", Duration::from_micros(us * 10), 1);
        }
        stats.decided("s", "b", "sql", Outcome::Denied);
        let report = &stats.report()[0];
        assert_eq!(
            (report.answered, report.masked_values, report.denied),
            (100, 100, 1)
        );
        let (p50, p99) = (report.p50_us.unwrap(), report.p99_us.unwrap());
        // Buckets are 19% wide: the estimate is the bucket's upper bound.
        assert!((500..=600).contains(&p50), "{p50}");
        assert!((990..=1200).contains(&p99), "{p99}");
    }
}
