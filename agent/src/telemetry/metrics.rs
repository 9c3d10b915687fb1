//! Prometheus metrics on a loopback HTTP listener (off unless `metrics_listen` is set).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use skillgate_common::counter;
use tracing::{info, warn};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub skill: String,
    pub backend: String,
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkillLabels {
    pub skill: String,
}

pub struct Metrics {
    registry: Registry,
    /// Skill connections decided, by skill, backend and decision.
    pub connections: Family<ConnectionLabels, Counter>,
    /// Time from accept to decision (metadata, identity, policy, record), by skill.
    pub decision_seconds: Family<SkillLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("skillgate");
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections",
            "Skill connections decided by the proxy",
            connections.clone(),
        );
        let decision_seconds = Family::<SkillLabels, Histogram>::new_with_constructor(|| {
            // 10 us to ~5 s.
            Histogram::new(exponential_buckets(0.000_01, 4.0, 10))
        });
        registry.register(
            "decision_seconds",
            "Time from accepting a skill connection to carrying out its decision",
            decision_seconds.clone(),
        );
        Self {
            registry,
            connections,
            decision_seconds,
        }
    }
}

/// What `/metrics` shows besides the registry, from where each lives.
pub struct Sources<'a> {
    /// The policy in force, which names the skills.
    pub policy: &'a skillgate_policy::Policy,
    pub counters: &'a crate::kernel::enforce::Counters,
    pub skills: &'a crate::kernel::cgroup::SkillsCgroup,
    pub ops: &'a crate::telemetry::opstats::OpStats,
    /// The recorder's journal (`None`: recording is off).
    pub journal: Option<crate::record::Health>,
    /// DNS queries dropped because they were not one plain question.
    pub dns_malformed: u64,
}

/// Renders the metrics page.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

impl Metrics {
    /// The registry's metrics, then the eBPF programs' per-skill counters, the confinement
    /// audit and the operation counts.
    pub fn render(&self, sources: &Sources<'_>) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err() {
            warn!("cannot encode metrics");
        }
        let policy = sources.policy;
        let _ = writeln!(
            out,
            "# HELP skillgate_ebpf_events Socket events the eBPF programs saw, by skill and kind\n\
             # TYPE skillgate_ebpf_events counter"
        );
        for (cgroup_id, counts) in sources.counters.per_cgroup() {
            let skill = sources
                .skills
                .resolve(cgroup_id)
                .and_then(|c| policy.skill_for_cgroup(&c).map(|s| s.name.clone()))
                .unwrap_or_else(|| "unknown".to_owned());
            for (name, value) in counter::NAMES.iter().zip(counts) {
                if value > 0 {
                    let _ = writeln!(
                        out,
                        "skillgate_ebpf_events_total{{skill=\"{skill}\",kind=\"{name}\"}} {value}"
                    );
                }
            }
        }
        let audit = crate::kernel::audit::audit(&sources.skills.dir);
        let unconfined = audit.unconfined().count();
        let shared: usize = audit.shared_uids.iter().map(|s| s.outside).sum();
        let _ = writeln!(
            out,
            "# HELP skillgate_skill_processes Processes in the skills cgroup, by whether they \
             are confined as skillgate exec confines them\n\
             # TYPE skillgate_skill_processes gauge\n\
             skillgate_skill_processes{{confined=\"true\"}} {}\n\
             skillgate_skill_processes{{confined=\"false\"}} {unconfined}\n\
             # HELP skillgate_shared_uid_processes Processes outside the skills cgroup running \
             as a uid a skill process runs as\n\
             # TYPE skillgate_shared_uid_processes gauge\n\
             skillgate_shared_uid_processes {shared}",
            audit.processes.len() - unconfined
        );
        sources.ops.render_prometheus(&mut out);
        let _ = writeln!(
            out,
            "# HELP skillgate_dns_malformed Skills' DNS queries dropped, never forwarded, because \
             they were not one plain question\n\
             # TYPE skillgate_dns_malformed counter\n\
             skillgate_dns_malformed_total {}",
            sources.dns_malformed
        );
        if let Some(journal) = &sources.journal {
            render_journal(&mut out, journal);
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

/// The journal: failed or not, its fdatasyncs, and how far it is written, synced, indexed.
fn render_journal(out: &mut String, journal: &crate::record::Health) {
    let _ = writeln!(
        out,
        "# HELP skillgate_journal_failed 1 once an fdatasync of the journal failed: every \
         decision is refused until the agent restarts\n\
         # TYPE skillgate_journal_failed gauge\n\
         skillgate_journal_failed {}\n\
         # HELP skillgate_journal_fdatasyncs fdatasyncs of the journal since the agent started\n\
         # TYPE skillgate_journal_fdatasyncs counter\n\
         skillgate_journal_fdatasyncs_total {}\n\
         # HELP skillgate_journal_records The newest journal record written, fdatasync'd and \
         indexed (sequence numbers)\n\
         # TYPE skillgate_journal_records gauge\n\
         skillgate_journal_records{{state=\"written\"}} {}\n\
         skillgate_journal_records{{state=\"synced\"}} {}\n\
         skillgate_journal_records{{state=\"indexed\"}} {}",
        u8::from(journal.failed.is_some()),
        journal.fdatasyncs,
        journal.written,
        journal.synced,
        journal.indexed
    );
}

/// Serves `/metrics` on `addr` (validated to be a loopback address).
pub async fn serve(addr: SocketAddr, render: Render) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr} (metrics_listen)"))?;
    info!(%addr, "metrics listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let render = Arc::clone(&render);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let render = Arc::clone(&render);
                        async move { Ok::<_, Infallible>(answer(&request, &render)) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn answer(request: &Request<hyper::body::Incoming>, render: &Render) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::GET || request.uri().path() != "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from_static(b"only GET /metrics\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(render())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}
