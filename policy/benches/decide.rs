//! Decision latency by policy size, SQL classification cost (uncached and cached), and the
//! detectors' cost over large answers.
//! Run with `cargo xtask bench policy`, which records the figures in BENCHMARKS.md.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use skillgate_policy::mask::{DETECTORS, mask_json, mask_text};
use skillgate_policy::sql::{Cache, classify};
use skillgate_policy::{Detector, Mask, Operation, Policy, Request};

/// A policy of `rules` rules over 100 skills and 50 PostgreSQL backends (or fewer for small
/// sizes), every rule a SQL grant on its own table.
fn policy(rules: usize) -> Policy {
    let skills = rules.clamp(1, 100);
    let backends = rules.clamp(1, 50);
    let mut text = String::new();
    for s in 0..skills {
        let _ = writeln!(
            text,
            "[[skill]]\nname = \"skill{s}\"\ngroups = [\"g{}\"]",
            s % 10
        );
    }
    for b in 0..backends {
        let _ = writeln!(
            text,
            "[[backend]]\nname = \"db{b}\"\nprotocol = \"postgres\"\ndial = [\"10.1.{}.{}:5432\"]\nupstream = \"127.0.0.1:5432\"",
            b / 250,
            b % 250
        );
    }
    for r in 0..rules {
        let _ = writeln!(
            text,
            "[[rule]]\nskills = [\"skill{}\"]\nbackend = \"db{}\"\neffect = \"allow\"\nsql = {{ kinds = [\"select\"], objects = [\"public.t{r}\"] }}",
            r % skills,
            r % backends
        );
    }
    Policy::parse("bench.toml", &text).expect("bench policy")
}

fn decisions(c: &mut Criterion) {
    let statements = classify("SELECT * FROM public.t0 WHERE id = $1").unwrap();
    let mut group = c.benchmark_group("decide");
    for rules in [10, 100, 1_000, 10_000] {
        let policy = policy(rules);
        let request = Request {
            skill: "skill0",
            token_groups: &[],
            backend: "db0",
            operation: Operation::Sql(&statements),
        };
        assert_eq!(
            policy.decide(&request).effect,
            skillgate_policy::Effect::Allow
        );
        group.bench_with_input(
            BenchmarkId::from_parameter(rules),
            &request,
            |b, request| {
                b.iter(|| policy.decide(black_box(request)));
            },
        );
    }
    group.finish();
}

fn classification(c: &mut Criterion) {
    let sql = "SELECT id, total FROM public.orders WHERE customer_id = $1 ORDER BY id LIMIT 10";
    let mut group = c.benchmark_group("classify");
    group.bench_function("uncached", |b| b.iter(|| classify(black_box(sql))));
    let mut cache = Cache::new(1024);
    cache.classify(sql);
    group.bench_function("cached", |b| b.iter(|| cache.classify(black_box(sql))));
    // pgbench -S's statement: the same shape with a new constant each time.
    let mut n = 0u64;
    group.bench_function("same shape", |b| {
        b.iter(|| {
            n += 1;
            let text = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n};");
            cache.classify(black_box(&text))
        })
    });
    // Its two parts: the shape (PostgreSQL's scanner), and the scrub of the text for the
    // record.
    group.bench_function("shape", |b| {
        b.iter(|| {
            n += 1;
            let text = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n};");
            skillgate_policy::sql::shape(black_box(&text))
        })
    });
    group.bench_function("scrub", |b| {
        b.iter(|| {
            n += 1;
            let text = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n};");
            skillgate_policy::mask::scrub(black_box(&text))
        })
    });
    group.finish();
}

fn masking(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    // The HTTP benchmark's 64 KiB body through its masked backend's rule.
    let body = format!("{{\"data\":\"{}\"}}", "x".repeat(64 * 1024 - 11));
    let rule = Mask {
        fields: vec!["email".to_owned()],
        detectors: vec![Detector::Card, Detector::Email],
        ..Mask::default()
    };
    group.bench_function("64 KiB JSON", |b| {
        b.iter(|| mask_json(black_box(body.as_bytes()), &rule, b"salt"))
    });
    // 37 KiB of text dense with numbers, one non-ASCII character per line, every detector.
    let text: String = (0..1000)
        .map(|i| format!("order {i} paid {}.{:02} € by user{i}\n", i * 3, i % 100))
        .collect();
    let every = Mask {
        detectors: DETECTORS.to_vec(),
        ..Mask::default()
    };
    group.bench_function("text, every detector", |b| {
        b.iter(|| mask_text(black_box(&text), &every, b"salt"))
    });
    group.finish();
}

criterion_group!(benches, decisions, classification, masking);
criterion_main!(benches);
