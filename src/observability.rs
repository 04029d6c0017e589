//! Logs (`tracing`, text or JSON) and the Prometheus metrics recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LoggingConfig;

/// Sets up logging to standard error. `RUST_LOG`, when set, wins over the config.
pub fn init_logging(config: &LoggingConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or a journal would keep the
    // escape codes as noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = if config.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the process-wide metrics recorder once and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then ours stays unused
            // but the handle still renders (empty) output.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "tchap_visio_transactions_received_total",
        "Appservice transactions stored (replays excluded)"
    );
    describe_counter!(
        "tchap_visio_transactions_replayed_total",
        "Appservice transactions received again and ignored"
    );
    describe_counter!(
        "tchap_visio_transactions_reused_id_total",
        "Appservice transactions whose id was used before for other events (processed)"
    );
    describe_counter!(
        "tchap_visio_events_received_total",
        "Events stored in the inbox"
    );
    describe_counter!(
        "tchap_visio_events_processed_total",
        "Inbox events processed"
    );
    describe_gauge!(
        "tchap_visio_inbox_pending",
        "Inbox events waiting to be processed"
    );
    describe_gauge!(
        "tchap_visio_outbound_queue_depth",
        "Requests to the homeserver waiting to be sent"
    );
    describe_counter!(
        "tchap_visio_outbound_send_failures_total",
        "Failed attempts to send to the homeserver"
    );
    describe_histogram!(
        "tchap_visio_outbound_send_seconds",
        "Time of one request to the homeserver"
    );
    describe_counter!(
        "tchap_visio_bot_api_summaries_total",
        "Summaries queued through the bot API"
    );
    describe_counter!(
        "tchap_visio_bot_api_refused_total",
        "Bot API requests with an unknown or revoked token"
    );
    describe_gauge!(
        "tchap_visio_webhook_pending",
        "Webhook deliveries waiting for an attempt"
    );
    describe_counter!(
        "tchap_visio_webhook_attempts_total",
        "Webhook delivery attempts, by outcome (delivered, retry, gave_up)"
    );
    // Series appear at zero from the start, so dashboards and tests see them before traffic.
    metrics::counter!("tchap_visio_transactions_received_total").absolute(0);
    metrics::counter!("tchap_visio_transactions_replayed_total").absolute(0);
    metrics::counter!("tchap_visio_transactions_reused_id_total").absolute(0);
    metrics::counter!("tchap_visio_events_received_total").absolute(0);
    metrics::counter!("tchap_visio_events_processed_total").absolute(0);
    metrics::counter!("tchap_visio_outbound_send_failures_total").absolute(0);
    metrics::counter!("tchap_visio_bot_api_summaries_total").absolute(0);
    metrics::counter!("tchap_visio_bot_api_refused_total").absolute(0);
}
