//! What recording costs a decision, through the real `Recorder`, measured in one run so that
//! the modes compare (other load on the machine moves all of them alike): modes alternate
//! round by round. Two loads:
//!
//! - `paced`: one task appends at a steady RATE (a decision awaited as the gate does, then its
//!   answer, detached); each append's latency.
//! - `chain`: one connection's closed loop, as `wrk -c1` drives the agent: a client thread
//!   sends a request over loopback TCP to a task on a 2-worker runtime, which records the
//!   decision, relays to an echo thread, records the answer and replies; each round trip's
//!   latency, and round trips per second.
//!
//! - `cpu`: one task appends records as fast as it can (a decision awaited, then its answer,
//!   detached), with `store_sync = "normal"`: the appending thread's CPU time per record, then,
//!   once the indexer has fed them all to SQLite, the indexer's CPU time per record. These two
//!   are what recording adds to each request's CPU, whatever the machine's other load.
//!
//! Modes: not recorded (`record = false`); recorded with the syncer off (an interval of an
//! hour: nothing fdatasync'd until a segment rolls, so nothing indexed before); recorded with
//! `store_sync = "normal"` (fdatasync every 100 ms, the indexer feeding SQLite behind it), once
//! with the indexer thread put back at nice 10 (how it ran before it became a `SCHED_IDLE`
//! thread) and once as the agent runs it. The chain's p99 is also given as wrk reports it
//! (wrk corrects for coordinated omission), which is how `cargo xtask bench http` sees it.
//! Run it as root (putting a thread back from `SCHED_IDLE` needs CAP_SYS_NICE); by hand:
//!
//! ```text
//! cargo run --release -p skillgate --example journal_latency -- [DIR] [RATE] [SECONDS] [ROUNDS]
//! ```
//!
//! DIR (default `target/bench-journal`) must be on the filesystem the figures are wanted for;
//! RATE is the paced load's appends per second (default 5000); each round lasts SECONDS
//! (default 4: a segment rolls once in most chain rounds; 0 runs only the `cpu` load); ROUNDS
//! per mode and load (default 3).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use skillgate::record::{Event, Facts, Kind, Recorder, Session, Sync, now_ns};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The syncer's interval in each mode (`None`: not recorded), and how the indexer thread is
/// scheduled (set from here, by its thread id: `None` leaves it as the agent starts it).
const MODES: [(&str, Option<u64>, Option<Sched>); 4] = [
    ("not recorded", None, None),
    ("syncer off", Some(3_600_000), None),
    ("normal, indexer at nice 10", Some(100), Some(Sched::Nice10)),
    ("normal (as shipped)", Some(100), None),
];

/// The benchmark's own nice value.
const BASE_NICE: i32 = -10;

/// How the indexer thread ran before it became a `SCHED_IDLE` thread.
#[derive(Clone, Copy)]
enum Sched {
    Nice10,
}

const MESSAGE: usize = 96;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/bench-journal".to_owned()),
    );
    let rate: u64 = args.next().map_or(Ok(5000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(4), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let length = Duration::from_secs(seconds);
    // Other work on the machine disturbs the figures less at nice -10 (every thread made from
    // here on inherits it); the indexer at nice 10 is put 10 levels below that.
    // SAFETY: plain integer arguments; who 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, BASE_NICE) } != 0 {
        eprintln!(
            "cannot run at nice {BASE_NICE}: {}",
            std::io::Error::last_os_error()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut paced: Vec<Vec<u64>> = vec![Vec::new(); MODES.len()];
    let mut chain: Vec<Vec<u64>> = vec![Vec::new(); MODES.len()];
    let mut corrected: Vec<Vec<u64>> = vec![Vec::new(); MODES.len()];
    let mut appends: Vec<Vec<u64>> = vec![Vec::new(); MODES.len()];
    let mut queued: Vec<u64> = vec![0; MODES.len()];
    let mut cpu: Vec<Vec<(String, u64)>> = vec![Vec::new(); MODES.len()];
    let mut per_record = Vec::new();
    for _ in 0..rounds {
        per_record.push(runtime.block_on(cpu_per_record(&dir))?);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let per_record = format!(
        "CPU per record ({CPU_RECORDS} records appended as fast as one task can, median of \
         {rounds}): appending {:.2} us, indexing {:.2} us",
        median(per_record.iter().map(|r| r.0).collect()),
        median(per_record.iter().map(|r| r.1).collect()),
    );
    if length.is_zero() {
        let _ = std::fs::remove_dir_all(&dir);
        println!("{per_record}");
        return Ok(());
    }
    for _ in 0..rounds {
        for (mode, (_, interval, sched)) in MODES.iter().enumerate() {
            let recorder = recorder(&dir, *interval)?;
            if let Some(sched) = sched {
                schedule_indexer(*sched)?;
            }
            let before = thread_cpu();
            let (trips, took, waited) = runtime.block_on(run_chain(&recorder, length))?;
            queued[mode] += waited;
            corrected[mode].extend(wrk_corrected(&trips, length));
            chain[mode].extend(trips);
            appends[mode].extend(took);
            add_cpu(&mut cpu[mode], &before, &thread_cpu());
            stop(&recorder)?;
            if interval.is_some() {
                let recorder = recorder_fresh(&dir, *interval)?;
                if let Some(sched) = sched {
                    schedule_indexer(*sched)?;
                }
                paced[mode].extend(runtime.block_on(run_paced(&recorder, rate, length))?);
                stop(&recorder)?;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "load\tmode\tcount\tper_s\tp50_us\tp99_us\tp99.9_us\tmax_us\t({}, at nice {BASE_NICE})",
        machine()
    );
    for (mode, (name, ..)) in MODES.iter().enumerate() {
        let per_s = chain[mode].len() as f64 / (rounds as f64 * seconds as f64);
        print_row("chain", name, &mut chain[mode], per_s);
    }
    for (mode, (name, interval, _)) in MODES.iter().enumerate() {
        if interval.is_some() {
            let per_s = appends[mode].len() as f64 / (rounds as f64 * seconds as f64);
            print_row("chain appends", name, &mut appends[mode], per_s);
            let over = |at: u64| appends[mode].iter().filter(|t| **t >= at).count();
            println!(
                "\t(appends over 1 ms: {}, over 5 ms: {})",
                over(1_000_000),
                over(5_000_000)
            );
        }
    }
    for (mode, (name, interval, _)) in MODES.iter().enumerate() {
        if interval.is_some() {
            print_row("paced", name, &mut paced[mode], rate as f64);
        }
    }
    println!("\nThe chain's p99 as wrk reports it (corrected for coordinated omission: a stall of");
    println!(
        "S counts as the requests a steady client would have sent during it), and its stalls:"
    );
    for (mode, (name, ..)) in MODES.iter().enumerate() {
        let c = &mut corrected[mode];
        c.sort_unstable();
        let p99 = c[((c.len() as f64 * 0.99) as usize).min(c.len() - 1)] as f64 / 1000.0;
        let stalls = |at: u64| chain[mode].iter().filter(|t| **t >= at).count();
        println!(
            "{name}: p99 {p99:.1} us; round trips over 1 ms: {}, over 5 ms: {}; the loop's \
             threads waited for a CPU {:.1} us per round trip",
            stalls(1_000_000),
            stalls(5_000_000),
            queued[mode] as f64 / 1000.0 / chain[mode].len().max(1) as f64
        );
    }
    println!("\n{per_record}");
    println!("\nCPU of this process's threads during the chain load, ms per second:");
    for (mode, (name, ..)) in MODES.iter().enumerate() {
        let per_s = |ticks: u64| ticks as f64 * 10.0 / (rounds as f64 * seconds as f64);
        let threads: Vec<String> = cpu[mode]
            .iter()
            .map(|(thread, ticks)| format!("{thread} {:.0}", per_s(*ticks)))
            .collect();
        println!("{name}: {}", threads.join(", "));
    }
    Ok(())
}

/// A round's round trips with wrk's correction (`stats_correct`): each one of at least twice
/// the mean interval also counts as the requests that would have waited behind it.
fn wrk_corrected(trips: &[u64], length: Duration) -> Vec<u64> {
    let mut out = trips.to_vec();
    let Some(expected) = (length.as_nanos() as u64).checked_div(trips.len() as u64) else {
        return out;
    };
    for trip in trips.iter().filter(|t| **t >= 2 * expected) {
        let mut m = trip - expected;
        while m > expected {
            out.push(m);
            m -= expected;
        }
    }
    out
}

/// Schedules the (newest) indexer thread as `sched` says.
fn schedule_indexer(sched: Sched) -> Result<()> {
    let mut found = None;
    for _ in 0..1000 {
        for task in std::fs::read_dir("/proc/self/task")?.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == "skillgate-index" {
                let tid: i32 = task.file_name().to_string_lossy().parse()?;
                found = found.max(Some(tid));
            }
        }
        if found.is_some() {
            // Past its own start-up (where it sets its priority).
            std::thread::sleep(Duration::from_millis(5));
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let tid = found.ok_or_else(|| anyhow::anyhow!("no indexer thread"))?;
    let param = libc::sched_param { sched_priority: 0 };
    let (policy, nice) = match sched {
        Sched::Nice10 => (libc::SCHED_OTHER, BASE_NICE + 10),
    };
    // SAFETY: plain integer arguments and a pointer to a live sched_param.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    // SAFETY: plain integer arguments.
    let rc = rc | unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// CPU ticks (user + system, 1/100 s) of this process's threads, by name.
fn thread_cpu() -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = fields
            .get(11..13)
            .map_or(0, |f| f.iter().map(|t| t.parse::<u64>().unwrap_or(0)).sum());
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += ticks,
            None => out.push((name, ticks)),
        }
    }
    out
}

/// Adds what each thread used between `before` and `after` (threads gone since are lost).
fn add_cpu(total: &mut Vec<(String, u64)>, before: &[(String, u64)], after: &[(String, u64)]) {
    for (name, ticks) in after {
        let was = before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, t)| *t);
        let used = ticks.saturating_sub(was);
        match total.iter_mut().find(|(n, _)| n == name) {
            Some((_, t)) => *t += used,
            None => total.push((name.clone(), used)),
        }
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} cpus")
}

fn print_row(load: &str, mode: &str, samples: &mut [u64], per_s: f64) {
    samples.sort_unstable();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1000.0
    };
    println!(
        "{load}\t{mode}\t{}\t{per_s:.0}\t{:.1}\t{:.1}\t{:.1}\t{:.1}",
        samples.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    );
}

fn recorder(dir: &Path, interval_ms: Option<u64>) -> Result<Recorder> {
    match interval_ms {
        None => Ok(Recorder::off()),
        Some(_) => recorder_fresh(dir, interval_ms),
    }
}

fn recorder_fresh(dir: &Path, interval_ms: Option<u64>) -> Result<Recorder> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let sync = Sync {
        full: false,
        interval: Duration::from_millis(interval_ms.unwrap_or(100)),
    };
    Recorder::start(&dir.join("sessions.db"), i64::MAX, sync)
}

fn stop(recorder: &Recorder) -> Result<()> {
    recorder.stop()?;
    // The stopped threads notice within their next wake-up.
    std::thread::sleep(Duration::from_millis(150));
    Ok(())
}

/// The paced load; returns each append's nanoseconds.
async fn run_paced(recorder: &Recorder, rate: u64, length: Duration) -> Result<Vec<u64>> {
    let session = recorder.open(session(), event(Kind::Connect, 0)).await?;
    let every = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let mut next = start;
    let mut took = Vec::with_capacity((rate * length.as_secs()) as usize);
    let mut n = 0u64;
    while start.elapsed() < length {
        next += every;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        n += 1;
        let at = Instant::now();
        if n % 2 == 1 {
            recorder.event(session, event(Kind::Http, n)).await?;
        } else {
            recorder.event_detached(session, event(Kind::Response, n));
        }
        took.push(at.elapsed().as_nanos() as u64);
    }
    Ok(took)
}

/// The closed loop; returns each round trip's nanoseconds, each append's, and how long the
/// loop's threads (client, echo, workers) waited runnable for a CPU.
async fn run_chain(recorder: &Recorder, length: Duration) -> Result<(Vec<u64>, Vec<u64>, u64)> {
    let echo = TcpListener::bind("127.0.0.1:0")?;
    let echo_addr = echo.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut conn, _) = echo.accept()?;
        conn.set_nodelay(true)?;
        let mut buf = [0u8; MESSAGE];
        let waited = run_queue_wait();
        while conn.read_exact(&mut buf).is_ok() {
            conn.write_all(&buf)?;
        }
        Ok(run_queue_wait() - waited)
    });
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let front_addr = front.local_addr()?;
    let client = std::thread::spawn(move || -> std::io::Result<(Vec<u64>, u64)> {
        let mut conn = TcpStream::connect(front_addr)?;
        conn.set_nodelay(true)?;
        let mut buf = [7u8; MESSAGE];
        let mut took = Vec::new();
        let waited = run_queue_wait();
        let start = Instant::now();
        while start.elapsed() < length {
            let at = Instant::now();
            conn.write_all(&buf)?;
            conn.read_exact(&mut buf)?;
            took.push(at.elapsed().as_nanos() as u64);
        }
        Ok((took, run_queue_wait() - waited))
    });
    let (mut skill, _) = front.accept().await?;
    skill.set_nodelay(true)?;
    let mut upstream = tokio::net::TcpStream::connect(echo_addr).await?;
    upstream.set_nodelay(true)?;
    let recorder = recorder.clone();
    let workers = workers_wait();
    let agent = tokio::spawn(async move {
        let session = recorder.open(session(), event(Kind::Connect, 0)).await?;
        let mut buf = [0u8; MESSAGE];
        let mut n = 0;
        let mut took = Vec::new();
        while skill.read_exact(&mut buf).await.is_ok() {
            n += 1;
            let at = Instant::now();
            recorder
                .event(session, event(Kind::Http, 2 * n - 1))
                .await?;
            took.push(at.elapsed().as_nanos() as u64);
            upstream.write_all(&buf).await?;
            upstream.read_exact(&mut buf).await?;
            let at = Instant::now();
            recorder.event_detached(session, event(Kind::Response, 2 * n));
            took.push(at.elapsed().as_nanos() as u64);
            skill.write_all(&buf).await?;
        }
        anyhow::Ok(took)
    });
    let (took, client_waited) = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client panicked"))??;
    let appends = agent.await??;
    let echo_waited = echo
        .join()
        .map_err(|_| anyhow::anyhow!("the echo server panicked"))??;
    let waited = client_waited + echo_waited + workers_wait().saturating_sub(workers);
    Ok((took, appends, waited))
}

/// Records the `cpu` load appends.
const CPU_RECORDS: u64 = 200_000;

/// The `cpu` load: microseconds of CPU per record, appending (this thread: the future runs on
/// it, and with `normal` an append never waits) and indexing (the indexer thread, until it has
/// indexed every record).
async fn cpu_per_record(dir: &Path) -> Result<(f64, f64)> {
    let recorder = recorder_fresh(dir, Some(100))?;
    let indexer = || {
        std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "skillgate-index")
            })
            // The newest: a stopped recorder's indexer may not have ended yet.
            .max_by_key(|task| {
                task.file_name()
                    .to_string_lossy()
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .map_or(0, |task| schedstat_field(&task.path().join("schedstat"), 0))
    };
    let session = recorder.open(session(), event(Kind::Connect, 0)).await?;
    let (mine, theirs) = (
        schedstat_field(Path::new("/proc/thread-self/schedstat"), 0),
        indexer(),
    );
    for n in 1..=CPU_RECORDS / 2 {
        recorder
            .event(session, event(Kind::Http, 2 * n - 1))
            .await?;
        recorder.event_detached(session, event(Kind::Response, 2 * n));
    }
    let appending = schedstat_field(Path::new("/proc/thread-self/schedstat"), 0) - mine;
    let health = || recorder.health().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while health().indexed < health().written {
        anyhow::ensure!(Instant::now() < deadline, "the indexer did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let indexing = indexer() - theirs;
    stop(&recorder)?;
    let per = |ns: u64| ns as f64 / 1000.0 / CPU_RECORDS as f64;
    Ok((per(appending), per(indexing)))
}

/// Nanoseconds the calling thread has spent runnable but waiting for a CPU.
fn run_queue_wait() -> u64 {
    schedstat_wait(Path::new("/proc/thread-self/schedstat"))
}

/// The same, summed over the runtime's worker threads.
fn workers_wait() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|c| c.trim() == "tokio-rt-worker")
        })
        .map(|task| schedstat_wait(&task.path().join("schedstat")))
        .sum()
}

fn schedstat_wait(path: &Path) -> u64 {
    schedstat_field(path, 1)
}

/// A field of a thread's schedstat: 0 is nanoseconds on a CPU, 1 waiting for one.
fn schedstat_field(path: &Path, field: usize) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split(' ').nth(field).and_then(|w| w.trim().parse().ok()))
        .unwrap_or(0)
}

fn session() -> Session {
    Session {
        started_ns: now_ns(),
        skill: Some("bench".to_owned()),
        pid: std::process::id(),
        uid: 0,
        gid: 0,
        exe: Some("/usr/bin/wrk".to_owned()),
        cmdline: Some("wrk -c1 http://10.0.0.5/".to_owned()),
        cgroup: Some("/skills.slice/bench.scope".to_owned()),
        origin: "10.0.0.5:80".to_owned(),
        backend: Some("api".to_owned()),
    }
}

/// An event the size of an HTTP request's decision or answer.
fn event(kind: Kind, n: u64) -> Event {
    Event {
        at_ns: now_ns(),
        kind,
        operation: format!("GET /v1/items/{n}?fields=name,owner"),
        decision: "allow".to_owned(),
        rule: Some("read-items".to_owned()),
        reason: "rule `read-items` allows GET /v1/items/*".to_owned(),
        facts: Facts {
            decision_id: Some(format!("1.{}", n.div_ceil(2))),
            status: (kind == Kind::Response).then(|| "200".to_owned()),
            bytes: (kind == Kind::Response).then_some(512),
            duration_us: (kind == Kind::Response).then_some(140),
            ..Facts::default()
        },
    }
}
