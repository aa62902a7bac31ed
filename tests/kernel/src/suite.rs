//! The suite every kernel backend runs: the contract of [`FlowSource`]
//! ([`flow_conformance`], on a [`KernelSubject`]), the traffic
//! [`scenarios`](crate::scenarios) and the enforced egress
//! [`policy`](crate::policy), generated for a backend by
//! [`backend_suite!`](crate::backend_suite).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flow_conformance::{ExpectedFlow, Subject};
use flow_core::counters::{Counters, DirectionCounters};
use flow_core::{CloseReason, FlowSource, FlowStream};
use flow_policy::Policy;

use crate::{Server, TestEnv, send_udp};

/// What the suite needs to know of a kernel backend: how its tests make
/// and break its sources, and what of them the kernel shows.
pub trait KernelBackend: Clone + Send + Sync + 'static {
    /// Readies a fresh environment before any source starts in it (the
    /// eBPF backend: conntrack on, the peer of the scenarios' counters).
    fn prepare(&self, _env: &TestEnv) {}

    /// A fresh source of `env.cgroup`, configured as the tests want it.
    fn source(&self, env: &TestEnv) -> Box<dyn FlowSource>;

    /// A fresh source that [`KernelBackend::break_source`] can break
    /// ([`Subject::breakable_source`]).
    fn breakable_source(&self, env: &TestEnv) -> Box<dyn FlowSource> {
        self.source(env)
    }

    /// A fresh source with buffers small enough for a burst of
    /// connections to overflow while nobody reads.
    fn lossy_source(&self, env: &TestEnv) -> Box<dyn FlowSource>;

    /// A fresh source that reports flows open for `every` with their
    /// counters so far, every `every` ([`Subject::updating_source`]).
    fn updating_source(&self, env: &TestEnv, every: Duration) -> Box<dyn FlowSource>;

    /// A fresh source that enforces `policy` (the backend's enforce mode).
    fn enforcing_source(&self, env: &TestEnv, policy: Arc<Policy>) -> Box<dyn FlowSource>;

    /// A fresh source that enforces `policy` but cannot put it in place
    /// (the backend's test knob simulates a kernel that refuses it).
    fn failing_enforcing_source(&self, env: &TestEnv, policy: Arc<Policy>) -> Box<dyn FlowSource>;

    /// The errno's name a TCP `connect()` the policy refuses fails with.
    fn tcp_refusal(&self) -> &'static str;

    /// Makes the started source of `env` fail, from outside.
    fn break_source(&self, env: &TestEnv);

    /// What of a source of `env` is still in the kernel, one line each.
    fn leftovers(&self, env: &TestEnv) -> Vec<String>;

    /// The reasons the backend may give for closing a UDP flow whose
    /// socket closed.
    fn udp_close_reasons(&self) -> &'static [CloseReason];
}

/// Connections the burst of [`Subject::cause_loss`] makes, one after the
/// other, while nobody reads: several thousand events, far more than a
/// page of ring buffer or of netlink buffer holds.
const BURST: &str = "2000";

/// A kernel backend as a conformance [`Subject`]: its own namespace and
/// cgroup, and a TCP echo server outside the cgroup for the traffic made
/// inside it.
#[derive(Debug)]
pub struct KernelSubject<B> {
    server: Server,
    env: Arc<TestEnv>,
    backend: B,
}

impl<B: KernelBackend> KernelSubject<B> {
    /// A subject for `test`, with the generator at `traffic`; `None` when
    /// the test must skip ([`crate::privileged`]).
    #[must_use]
    pub fn new(backend: B, test: &str, traffic: &str) -> Option<Self> {
        let env = TestEnv::new(test, traffic)?;
        backend.prepare(&env);
        let server = env.server_outside(&["serve-tcp", "127.0.0.1:0"]);
        Some(Self {
            server,
            env: Arc::new(env),
            backend,
        })
    }

    /// Runs `work` on the environment off the async runtime's threads (it
    /// waits for processes).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&B, &TestEnv, u16) -> T + Send + 'static,
    ) -> T {
        let (backend, env, port) = (
            self.backend.clone(),
            Arc::clone(&self.env),
            self.server.port,
        );
        tokio::task::spawn_blocking(move || work(&backend, &env, port))
            .await
            .expect("the test's work does not panic")
    }
}

#[async_trait]
impl<B: KernelBackend> Subject for KernelSubject<B> {
    fn source(&self) -> Box<dyn FlowSource> {
        self.backend.source(&self.env)
    }

    fn breakable_source(&self) -> Box<dyn FlowSource> {
        self.backend.breakable_source(&self.env)
    }

    fn lossy_source(&self) -> Box<dyn FlowSource> {
        self.backend.lossy_source(&self.env)
    }

    /// A datagram nobody answers (one packet of 128 bytes) and a TCP
    /// connection to the server, from inside the cgroup.
    async fn make_flows(&self) -> Vec<ExpectedFlow> {
        self.blocking(|_, env, port| {
            let datagram = send_udp(&env.cgroup, &env.netns);
            let connection = env.inside(&["tcp", &format!("127.0.0.1:{port}"), "--bytes", "1000"]);
            vec![
                // One way: the initiator's datagram, nothing back.
                ExpectedFlow::new(datagram).counted_by_direction(DirectionCounters::new(
                    Counters::new(1, 128),
                    Counters::default(),
                )),
                ExpectedFlow::new(connection[0].key()),
            ]
        })
        .await
    }

    fn updating_source(&self, every: Duration) -> Box<dyn FlowSource> {
        self.backend.updating_source(&self.env, every)
    }

    /// A TCP connection to the echo server that sends half of 20,000 bytes,
    /// stays open `open_for` (the pause is the behaviour under test: a
    /// long flow), sends the rest and reads the echo. While it pauses, the
    /// first half has passed (the server echoes once it has read it all):
    /// updates count its payload.
    async fn make_long_flow(&self, open_for: Duration) -> ExpectedFlow {
        self.blocking(move |_, env, port| {
            let pause = open_for.as_millis().to_string();
            let flows = env.inside(&[
                "tcp",
                &format!("127.0.0.1:{port}"),
                "--bytes",
                "20000",
                "--pause-ms",
                &pause,
            ]);
            ExpectedFlow::new(flows[0].key()).open_with(10_000, 0)
        })
        .await
    }

    async fn break_source(&self) {
        self.blocking(|backend, env, _| backend.break_source(env))
            .await;
    }

    async fn cause_loss(&self) {
        self.blocking(|_, env, port| {
            let dst = format!("127.0.0.1:{port}");
            let made = env.inside(&["tcp", &dst, "--bytes", "1", "--count", BURST]);
            assert_eq!(made.len().to_string(), BURST);
        })
        .await;
    }

    fn leftovers(&self) -> Vec<String> {
        self.backend.leftovers(&self.env)
    }
}

/// A fresh environment for `test` with a started source of `backend` in
/// it, for a traffic scenario; `None` when the test must skip.
///
/// # Panics
/// When the source does not start.
pub async fn started<B: KernelBackend>(
    backend: &B,
    test: &str,
    traffic: &str,
) -> Option<(TestEnv, FlowStream)> {
    let env = TestEnv::new(test, traffic)?;
    backend.prepare(&env);
    let mut source = backend.source(&env);
    let stream = source
        .start()
        .await
        .unwrap_or_else(|error| panic!("the {} source does not start: {error}", source.name()));
    Some((env, stream))
}

/// The suite for a kernel backend, as tests of the calling test file: a
/// module `conformance` with one test per clause of [`flow_conformance`],
/// and a module `scenarios` with one test per traffic scenario. `$backend`
/// is a [`KernelBackend`] value (named from the file's root), and the file
/// belongs to this crate, whose `traffic` generator the tests run.
///
/// ```ignore
/// flowtrack_kernel_tests::backend_suite!(Ebpf);
/// ```
#[macro_export]
macro_rules! backend_suite {
    ($backend:expr) => {
        /// The contract of every flow source, on this backend.
        mod conformance {
            use super::*;

            $crate::backend_suite!(@clause $backend, starts_once);
            $crate::backend_suite!(@clause $backend, reports_flows);
            $crate::backend_suite!(@clause $backend, a_fatal_error_ends_the_stream);
            $crate::backend_suite!(@clause $backend, loss_is_recoverable);
            $crate::backend_suite!(@clause $backend, reports_updates);
            $crate::backend_suite!(@clause $backend, finishing_hands_over_the_losses_then_ends);

            /// On a single-threaded runtime: the drop must not wait for
            /// the clean-up on the runtime's one thread.
            #[tokio::test(flavor = "current_thread")]
            async fn dropping_the_stream_releases_everything_promptly() {
                if let Some(subject) = $crate::suite::KernelSubject::new(
                    $backend,
                    "dropping_the_stream_releases_everything_promptly",
                    env!("CARGO_BIN_EXE_traffic"),
                ) {
                    $crate::conformance::dropping_the_stream_releases_everything_promptly(&subject)
                        .await;
                }
            }
        }

        /// The traffic scenarios, on this backend.
        mod scenarios {
            use super::*;

            $crate::backend_suite!(@scenario $backend, tcp_over_ipv4_and_ipv6_with_known_payloads,
                |env, stream| $crate::scenarios::tcp_over_both_families(env, stream));
            $crate::backend_suite!(@scenario $backend, udp_over_ipv4_and_ipv6_counts_every_datagram,
                |env, stream| $crate::scenarios::udp_over_both_families(
                    env,
                    stream,
                    $crate::suite::KernelBackend::udp_close_reasons(&$backend),
                ));
            $crate::backend_suite!(@scenario $backend, a_refused_connection_opens_and_closes,
                |env, stream| $crate::scenarios::refused_connection(env, stream));
            $crate::backend_suite!(@scenario $backend, icmp_echo_over_ipv4_and_ipv6,
                |env, stream| $crate::scenarios::icmp_echo(env, stream));
            $crate::backend_suite!(@scenario $backend, an_inbound_connection_is_keyed_from_the_remote_peer,
                |env, stream| $crate::scenarios::inbound_connection(env, stream));
            $crate::backend_suite!(@scenario $backend, traffic_outside_the_cgroup_is_not_reported,
                |env, stream| $crate::scenarios::outside_traffic_is_not_reported(env, stream));
        }

        /// The egress policy, enforced by this backend.
        mod policy {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn enforce_refuses_denied_destinations_at_once() {
                if let Some(env) = $crate::TestEnv::new(
                    "enforce_refuses_denied_destinations_at_once",
                    env!("CARGO_BIN_EXE_traffic"),
                ) {
                    let backend = $backend;
                    $crate::suite::KernelBackend::prepare(&backend, &env);
                    let policy = std::sync::Arc::new($crate::policy::enforced_policy());
                    let mut source =
                        $crate::suite::KernelBackend::enforcing_source(&backend, &env, policy);
                    let mut stream = source
                        .start()
                        .await
                        .unwrap_or_else(|error| panic!("enforcement is not in place: {error}"));
                    let refusal = $crate::suite::KernelBackend::tcp_refusal(&backend);
                    $crate::policy::enforce_refuses_at_once(&env, &mut stream, refusal).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn enforcement_that_cannot_be_put_in_place_fails_the_start() {
                if let Some(env) = $crate::TestEnv::new(
                    "enforcement_that_cannot_be_put_in_place_fails_the_start",
                    env!("CARGO_BIN_EXE_traffic"),
                ) {
                    let backend = $backend;
                    $crate::suite::KernelBackend::prepare(&backend, &env);
                    let policy = std::sync::Arc::new($crate::policy::enforced_policy());
                    let source = $crate::suite::KernelBackend::failing_enforcing_source(
                        &backend, &env, policy,
                    );
                    $crate::policy::enforcement_that_cannot_be_put_in_place_fails_the_start(
                        source,
                        || $crate::suite::KernelBackend::leftovers(&backend, &env),
                    )
                    .await;
                }
            }
        }
    };
    (@clause $backend:expr, $clause:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $clause() {
            if let Some(subject) = $crate::suite::KernelSubject::new(
                $backend,
                stringify!($clause),
                env!("CARGO_BIN_EXE_traffic"),
            ) {
                $crate::conformance::$clause(&subject).await;
            }
        }
    };
    (@scenario $backend:expr, $name:ident, |$env:ident, $stream:ident| $scenario:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if let Some((env, mut stream)) = $crate::suite::started(
                &$backend,
                stringify!($name),
                env!("CARGO_BIN_EXE_traffic"),
            )
            .await
            {
                let ($env, $stream) = (&env, &mut stream);
                $scenario.await;
            }
        }
    };
}
