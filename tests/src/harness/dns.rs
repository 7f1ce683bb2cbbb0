//! The load generator: queries every replica's DNS at a bounded rate for a bounded time
//! and keeps every answer with its timestamp, so a scenario can judge the whole history.
//! Each round asks every server for A over UDP, AAAA over UDP and A over TCP (what a
//! stub resolver asks, and where a truncated answer sends it).
//!
//! ```text
//!  LoadGen::start(servers, name, every, limit) ─ thread: round r ─► query each server
//!      │                                                  └─► Sample { at, server, answer }
//!  finish() ─► History ─ failed() / empty() / changes() / first_after(..)
//! ```

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::rr::RecordType;
use parking_lot::Mutex;

pub use lifeline_testkit::dns::{Answer, answer_a};

/// Sends one A query over UDP with a 300 ms timeout.
pub fn query_a(server: SocketAddr, name: &str) -> Answer {
    lifeline_testkit::dns::query_a_within(server, name, Duration::from_millis(300))
}

/// What a sample asked, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    UdpA,
    UdpAaaa,
    TcpA,
}

impl Asked {
    /// An A query: its answer holds the served addresses (the fleet is IPv4, so AAAA
    /// answers are NODATA and judged only by not failing).
    pub fn is_a(self) -> bool {
        self != Asked::UdpAaaa
    }
}

/// One recorded query.
#[derive(Clone, Debug)]
pub struct Sample {
    pub asked: Asked,
    /// When the (first) query was sent.
    pub sent: Instant,
    /// When the reply (or the timeout) came.
    pub at: Instant,
    /// Index of the server in the list the generator was given.
    pub server: usize,
    pub answer: Answer,
    /// The first attempt got no reply and was sent again (over TCP on a new
    /// connection), as a stub resolver does; `answer` is the second attempt's.
    pub retried: bool,
}

/// Queries running in a background thread.
#[derive(Debug)]
pub struct LoadGen {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoadGen {
    /// Queries `name` on every server once per `every`, for at most `limit` (a bound even
    /// if never stopped).
    pub fn start(servers: Vec<SocketAddr>, name: &str, every: Duration, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out, name) = (stop.clone(), samples.clone(), name.to_owned());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let rounds = (limit.as_millis() / every.as_millis().max(1)) as usize + 1;
            for round in 0..rounds {
                if s.load(Ordering::Relaxed) || start.elapsed() > limit {
                    return;
                }
                for (server, addr) in servers.iter().enumerate() {
                    for asked in [Asked::UdpA, Asked::UdpAaaa, Asked::TcpA] {
                        let (rtype, tcp) = match asked {
                            Asked::UdpA => (RecordType::A, false),
                            Asked::UdpAaaa => (RecordType::AAAA, false),
                            Asked::TcpA => (RecordType::A, true),
                        };
                        let ask = |timeout| {
                            lifeline_testkit::dns::query_within(*addr, &name, rtype, tcp, timeout)
                        };
                        // One retry after a lost reply (a new connection over TCP), like
                        // a stub resolver: a query fails only when both attempts get
                        // nothing. The first attempt's loss is kept (`retried`); the
                        // retry waits longer, so a busy test machine is not an outage.
                        let sent = Instant::now();
                        let mut answer = ask(Duration::from_millis(300));
                        let retried = answer == Answer::NoReply;
                        if retried {
                            answer = ask(Duration::from_secs(1));
                        }
                        out.lock().push(Sample {
                            asked,
                            sent,
                            at: Instant::now(),
                            server,
                            answer,
                            retried,
                        });
                    }
                }
                // Paced by the schedule, not by the replies: a slow round is not repeated.
                let next = every * (round as u32 + 1);
                if let Some(wait) = next.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        });
        LoadGen {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// What was recorded so far, without stopping.
    pub fn snapshot(&self) -> History {
        History(self.samples.lock().clone())
    }

    /// Stops the generator and returns the full history.
    pub async fn finish(mut self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A round is at most a few 300 ms timeouts.
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::task::spawn_blocking(move || t.join()),
            )
            .await;
        }
        History(std::mem::take(&mut *self.samples.lock()))
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Every answer a load generator recorded, in order.
#[derive(Clone, Debug, Default)]
pub struct History(pub Vec<Sample>);

/// One server's answer moving from one address set to another.
#[derive(Clone, Debug)]
pub struct Change {
    pub at: Instant,
    pub server: usize,
    pub from: Vec<IpAddr>,
    pub to: Vec<IpAddr>,
}

impl History {
    pub fn queries(&self) -> usize {
        self.0.len()
    }

    /// Samples with no reply or an error code.
    pub fn failed(&self) -> Vec<&Sample> {
        self.0.iter().filter(|s| s.answer.is_failed()).collect()
    }

    /// A queries that were NOERROR without an address.
    pub fn empty(&self) -> Vec<&Sample> {
        self.a().filter(|s| s.answer.is_empty()).collect()
    }

    /// Queries whose first attempt failed: no reply (then retried) or an error.
    pub fn first_try_failed(&self) -> Vec<&Sample> {
        self.0
            .iter()
            .filter(|s| s.retried || s.answer.is_failed())
            .collect()
    }

    /// Failed queries (after the retry) of one kind.
    pub fn failed_of(&self, asked: Asked) -> usize {
        self.0
            .iter()
            .filter(|s| s.asked == asked && s.answer.is_failed())
            .count()
    }

    /// The A samples: the ones whose answers carry the served addresses.
    fn a(&self) -> impl Iterator<Item = &Sample> {
        self.0.iter().filter(|s| s.asked.is_a())
    }

    /// The history without `server`'s samples.
    pub fn without(&self, server: usize) -> History {
        History(
            self.0
                .iter()
                .filter(|s| s.server != server)
                .cloned()
                .collect(),
        )
    }

    /// Samples taken at or after `t`.
    pub fn since(&self, t: Instant) -> History {
        History(self.0.iter().filter(|s| s.at >= t).cloned().collect())
    }

    /// Per server, every change of the (non-failed) address set.
    pub fn changes(&self) -> Vec<Change> {
        let mut last: Vec<Option<&[IpAddr]>> = Vec::new();
        let mut out = Vec::new();
        for s in self.a().filter(|s| !s.answer.is_failed()) {
            if last.len() <= s.server {
                last.resize(s.server + 1, None);
            }
            let now = s.answer.addresses();
            if let Some(prev) = last[s.server]
                && prev != now
            {
                out.push(Change {
                    at: s.at,
                    server: s.server,
                    from: prev.to_vec(),
                    to: now.to_vec(),
                });
            }
            last[s.server] = Some(now);
        }
        out
    }

    /// The servers that were queried.
    pub fn servers(&self) -> Vec<usize> {
        let mut s: Vec<usize> = self.0.iter().map(|s| s.server).collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// How long after `t` every server answered as `want` says and kept doing so until
    /// the end of the history; `None` when some server never settled.
    pub fn settled_after(&self, t: Instant, want: impl Fn(&[IpAddr]) -> bool) -> Option<Duration> {
        let end = self.0.last()?.at;
        self.settled_between(t, end, want)
    }

    /// Like [`History::settled_after`], but only samples up to `end` count.
    pub fn settled_between(
        &self,
        t: Instant,
        end: Instant,
        want: impl Fn(&[IpAddr]) -> bool,
    ) -> Option<Duration> {
        let mut worst = Duration::ZERO;
        for server in self.servers() {
            let mine: Vec<&Sample> = self
                .a()
                .filter(|s| s.server == server && s.at >= t && s.at <= end)
                .collect();
            // The sample after the last one that did not match.
            let last_bad = mine.iter().rposition(|s| !want(s.answer.addresses()));
            let first_good = match last_bad {
                Some(i) => mine.get(i + 1)?,
                None => mine.first()?,
            };
            worst = worst.max(first_good.at.duration_since(t));
        }
        Some(worst)
    }

    /// Whether any sample at or after `t` answered an address `bad` accepts.
    pub fn any_since(&self, t: Instant, bad: impl Fn(&[IpAddr]) -> bool) -> Vec<&Sample> {
        self.a()
            .filter(|s| s.at >= t && bad(s.answer.addresses()))
            .collect()
    }
}
