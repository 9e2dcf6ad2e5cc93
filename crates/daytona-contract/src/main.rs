//! The Daytona API server of the tests as a program (`daytona-contract-server`),
//! for benchmarks and for trying a client by hand:
//!
//! ```sh
//! cargo run --release -p daytona-contract -- \
//!     --latency-ms 20 --lifecycle-limit 6000 --seed 500 --label bench=teardown
//! ```
//!
//! The first line on stdout is the API URL (`http://127.0.0.1:PORT/api`, what
//! `DAYTONA_API_URL` should be); the seeded ids follow one a line with
//! `--print-ids`. It serves until killed; on SIGINT or SIGTERM it prints its
//! counters as JSON on stderr and exits 0. `GET /__contract/stats` answers
//! the same counters while it runs.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Parser;
use daytona_contract::{ContractConfig, ContractServer, SeedSandbox};

#[derive(Parser, Debug)]
#[command(
    name = "daytona-contract-server",
    about = "Serve the Daytona API v0.190 (as the Python SDK 0.226.1 sees it) on 127.0.0.1 for tests and benchmarks"
)]
struct Args {
    /// Port on 127.0.0.1 (0: a random free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The API key clients must send as `Authorization: Bearer KEY`.
    #[arg(long, default_value = "test-key")]
    key: String,
    /// Latency added to every call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// `sandbox-lifecycle` limit per minute (delete, start, stop, archive); none by default.
    #[arg(long)]
    lifecycle_limit: Option<u32>,
    /// `sandbox-create` limit per minute; none by default.
    #[arg(long)]
    create_limit: Option<u32>,
    /// Time from DELETE to destroyed (404), in milliseconds.
    #[arg(long, default_value_t = 200)]
    destroy_delay_ms: u64,
    /// Share of authenticated calls answered 500 (0.0-1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of calls whose connection is reset instead of answered (0.0-1.0).
    #[arg(long, default_value_t = 0.0)]
    reset_rate: f64,
    /// Answer GET /api/sandbox with a bare array, as before v0.180.
    #[arg(long)]
    legacy_list: bool,
    /// Sandboxes to create before serving.
    #[arg(long, default_value_t = 0)]
    seed: usize,
    /// A label of every seeded sandbox, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The state of the seeded sandboxes.
    #[arg(long, default_value = "started")]
    seed_state: String,
    /// How long ago the seeded sandboxes were created, in seconds.
    #[arg(long, default_value_t = 0)]
    seed_age_secs: u64,
    /// Print the seeded ids after the URL, one a line.
    #[arg(long)]
    print_ids: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let config = ContractConfig {
        api_key: args.key,
        latency: Duration::from_millis(args.latency_ms),
        error_rate_5xx: args.error_rate,
        reset_rate: args.reset_rate,
        lifecycle_limit_per_minute: args.lifecycle_limit,
        create_limit_per_minute: args.create_limit,
        destroy_delay: Duration::from_millis(args.destroy_delay_ms),
        legacy_list: args.legacy_list,
        rules: Vec::new(),
    };
    let server = ContractServer::start_on(config, args.port).await;
    let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
    let created_at = std::time::SystemTime::now() - Duration::from_secs(args.seed_age_secs);
    let ids: Vec<String> = (0..args.seed)
        .map(|_| {
            server.seed(SeedSandbox { name: None, labels: labels.clone(), state: args.seed_state.clone(), created_at })
        })
        .collect();

    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", server.api_url());
    if args.print_ids {
        for id in &ids {
            let _ = writeln!(stdout, "{id}");
        }
    }
    let _ = stdout.flush();
    drop(stdout);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let stats = serde_json::to_string(&server.stats()).unwrap_or_default();
    eprintln!("{stats}");
}
