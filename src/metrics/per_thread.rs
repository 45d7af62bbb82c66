//! Counts written on the per-request path: each thread writes its own, and a scrape sums them.
//!
//! A shared counter is written by every worker thread, and each write moves its cache line from
//! the core that wrote it last: two threads counting into one prometheus counter and histogram
//! took 137 ns per count here, one thread 11.5 ns (docs/performance.md, "Stop 15"). Here a
//! thread's counts are written by that thread only (a load and a store, no locked instruction),
//! and other threads only read them, when the metrics are scraped. Worker threads live as long
//! as the server, so the list of every thread's counts stays as small as the label sets.

use super::AuthOutcome;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: Prometheus' defaults.
const BOUNDS: &[f64; 11] = prometheus::DEFAULT_BUCKETS;

const REQUESTS: &str = "tokengate_http_requests_total";
const REQUESTS_HELP: &str = "HTTP requests answered, by method, route template and status.";
const DURATION: &str = "tokengate_http_request_duration_seconds";
const DURATION_HELP: &str =
    "Time from receiving a request to its answer, by method and route template.";
const AUTH: &str = "tokengate_auth_outcomes_total";
const AUTH_HELP: &str = "Authentication and authorization decisions, by outcome.";

/// Adds to a count only its own thread writes.
fn add(count: &AtomicU64, n: u64) {
    count.store(
        count.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// One thread's requests of one method, route and status.
struct Series {
    method: &'static str,
    route: Box<str>,
    status: u16,
    /// Requests per latency bucket, not cumulative; the last slot is above every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    total_nanos: AtomicU64,
}

/// One thread's authentication outcomes, in the order of [`AuthOutcome::ALL`].
type Outcomes = [AtomicU64; AuthOutcome::ALL.len()];

/// Every thread's counts, for the scrape. Appended to when a thread counts a series for the
/// first time; never shrunk, so the counts of a thread that ended are kept.
struct Threads {
    series: Vec<Arc<Series>>,
    outcomes: Vec<Arc<Outcomes>>,
}

static THREADS: Mutex<Threads> = Mutex::new(Threads {
    series: Vec::new(),
    outcomes: Vec::new(),
});

/// A thread's own counts: its series by route, then method and status.
#[derive(Default)]
struct Mine {
    series: HashMap<Box<str>, Vec<Arc<Series>>>,
    outcomes: Option<Arc<Outcomes>>,
}

thread_local! {
    static MINE: RefCell<Mine> = RefCell::default();
}

fn threads() -> std::sync::MutexGuard<'static, Threads> {
    THREADS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Counts one answered request and its latency.
pub fn request(method: &'static str, route: &str, status: u16, took: Duration) {
    MINE.with_borrow_mut(|mine| {
        let seen = mine.series.get(route).and_then(|of_route| {
            of_route
                .iter()
                .find(|s| s.method == method && s.status == status)
        });
        let series = match seen {
            Some(series) => series,
            None => {
                let series = Arc::new(Series {
                    method,
                    route: Box::from(route),
                    status,
                    buckets: Default::default(),
                    total_nanos: AtomicU64::new(0),
                });
                threads().series.push(series.clone());
                let of_route = mine.series.entry(Box::from(route)).or_default();
                of_route.push(series);
                of_route.last().expect("just pushed")
            }
        };
        let seconds = took.as_secs_f64();
        let slot = BOUNDS.partition_point(|&bound| bound < seconds);
        add(&series.buckets[slot], 1);
        add(
            &series.total_nanos,
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
        );
    });
}

/// Counts one authentication outcome.
pub fn outcome(outcome: AuthOutcome) {
    MINE.with_borrow_mut(|mine| {
        let outcomes = mine.outcomes.get_or_insert_with(|| {
            let outcomes: Arc<Outcomes> = Arc::default();
            threads().outcomes.push(outcomes.clone());
            outcomes
        });
        // `ALL` lists the outcomes in declaration order (a test checks it).
        add(&outcomes[outcome as usize], 1);
    });
}

/// The collector of the counts above: requests, their latency and authentication outcomes.
pub struct Collected {
    descs: Vec<Desc>,
}

impl Collected {
    pub fn new() -> Collected {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| l.to_string()).collect(),
                HashMap::new(),
            )
            .expect("valid metric")
        };
        Collected {
            descs: vec![
                desc(REQUESTS, REQUESTS_HELP, &["method", "route", "status"]),
                desc(DURATION, DURATION_HELP, &["method", "route"]),
                desc(AUTH, AUTH_HELP, &["outcome"]),
            ],
        }
    }
}

fn labelled(labels: &[(&str, &str)]) -> Metric {
    Metric::from_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).into());
                pair.set_value((*value).into());
                pair
            })
            .collect(),
    )
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.into());
    family.set_help(help.into());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn counter(labels: &[(&str, &str)], value: u64) -> Metric {
    let mut metric = labelled(labels);
    let mut counter = Counter::default();
    counter.set_value(value as f64);
    metric.set_counter(counter);
    metric
}

impl Collector for Collected {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (series, outcomes) = {
            let threads = threads();
            (threads.series.clone(), threads.outcomes.clone())
        };
        // Summed over threads, and for the latency over statuses; sorted like prometheus' own.
        let mut requests: BTreeMap<(&str, &str, u16), u64> = BTreeMap::new();
        let mut latency: BTreeMap<(&str, &str), ([u64; BOUNDS.len() + 1], u64)> = BTreeMap::new();
        for s in &series {
            let buckets = s.buckets.each_ref().map(|b| b.load(Ordering::Relaxed));
            let count: u64 = buckets.iter().sum();
            *requests.entry((s.method, &s.route, s.status)).or_default() += count;
            let (sums, nanos) = latency.entry((s.method, &s.route)).or_default();
            for (sum, n) in sums.iter_mut().zip(buckets) {
                *sum += n;
            }
            *nanos += s.total_nanos.load(Ordering::Relaxed);
        }
        let requests = requests
            .into_iter()
            .map(|((method, route, status), n)| {
                let status = status.to_string();
                counter(
                    &[("method", method), ("route", route), ("status", &status)],
                    n,
                )
            })
            .collect();
        let latency = latency
            .into_iter()
            .map(|((method, route), (buckets, nanos))| {
                let mut metric = labelled(&[("method", method), ("route", route)]);
                let mut histogram = Histogram::default();
                let mut below = 0;
                histogram.set_bucket(
                    BOUNDS
                        .iter()
                        .zip(buckets)
                        .map(|(&bound, n)| {
                            below += n;
                            let mut bucket = Bucket::default();
                            bucket.set_upper_bound(bound);
                            bucket.set_cumulative_count(below);
                            bucket
                        })
                        .collect(),
                );
                histogram.set_sample_count(buckets.iter().sum());
                histogram.set_sample_sum(nanos as f64 / 1e9);
                metric.set_histogram(histogram);
                metric
            })
            .collect();
        let mut by_outcome = [0u64; AuthOutcome::ALL.len()];
        for thread in &outcomes {
            for (sum, n) in by_outcome.iter_mut().zip(thread.iter()) {
                *sum += n.load(Ordering::Relaxed);
            }
        }
        // Every outcome, so each is exported (as 0) before it first happens.
        let auth = AuthOutcome::ALL
            .iter()
            .zip(by_outcome)
            .map(|(outcome, n)| counter(&[("outcome", outcome.as_str())], n))
            .collect();
        vec![
            family(REQUESTS, REQUESTS_HELP, MetricType::COUNTER, requests),
            family(DURATION, DURATION_HELP, MetricType::HISTOGRAM, latency),
            family(AUTH, AUTH_HELP, MetricType::COUNTER, auth),
        ]
    }
}
