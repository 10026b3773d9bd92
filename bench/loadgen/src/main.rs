//! `bunker-loadgen`: the load generator of `bench/run`. Each subcommand prints one JSON
//! object on stdout; failures go to stderr with a non-zero exit.

mod drive;
mod http;
mod lag;
mod promote;
mod stats;
mod status;
mod target;

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use drive::{Op, Plan, Stop};
use target::Target;

#[derive(Parser)]
#[command(about = "Load generator for Bunker's benchmark suite (bench/run)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Load {
    /// host:port of the server (loopback)
    #[arg(long)]
    addr: String,
    /// Concurrent connections, one request in flight on each
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Run for this many seconds (ignored with --count)
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Issue exactly this many operations instead of running for --duration
    #[arg(long)]
    count: Option<u64>,
    /// Keys are PREFIX/kNNNNNNNNNN
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Index of the first key (keeps keys unique across repeated runs)
    #[arg(long, default_value_t = 0)]
    first_index: u64,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// For reads: how many keys (PREFIX/k{first_index}..) were written beforehand
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Durable KV v2 writes of unique keys to Bunker
    BunkerWrite {
        #[command(flatten)]
        load: Load,
        #[arg(long)]
        token: String,
    },
    /// KV v2 reads of pre-written keys from Bunker
    BunkerRead {
        #[command(flatten)]
        load: Load,
        #[arg(long)]
        token: String,
    },
    /// Puts of unique keys through etcd's v3 HTTP/JSON gateway
    EtcdWrite {
        #[command(flatten)]
        load: Load,
    },
    /// Linearizable ranges of pre-written keys through etcd's gateway
    EtcdRead {
        #[command(flatten)]
        load: Load,
    },
    /// Replication lag under a fixed write rate (figure 4)
    Lag {
        #[arg(long)]
        primary: String,
        #[arg(long)]
        secondary: String,
        #[arg(long)]
        token: String,
        /// Writes per second, spread over --conns connections
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 16)]
        conns: usize,
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        #[arg(long, default_value = "lag")]
        prefix: String,
        /// How often the secondary's applied index is sampled, ms (each sample is a status
        /// request the secondary answers, CPU it does not spend applying)
        #[arg(long, default_value_t = 1.0)]
        sample_ms: f64,
        /// Every Nth write is a probe: from its acknowledgement the secondary is polled back to
        /// back until it shows the write applied (0: no probes)
        #[arg(long, default_value_t = 100)]
        probe_every: u64,
    },
    /// Promote a DR secondary and time the first accepted write (figure 7)
    Promote {
        #[arg(long)]
        secondary: String,
        /// The primary's unseal key
        #[arg(long)]
        key: String,
        /// A token valid on the primary (the secondary holds the primary's tokens)
        #[arg(long)]
        token: String,
    },
    /// `dr/status` latency, sequential requests on one connection
    Status {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 1000)]
        count: u64,
    },
    /// Print a TCP port on 127.0.0.1 that is free right now
    FreePort,
}

fn plan(load: Load, target: Target, op: Op) -> Plan {
    Plan {
        addr: load.addr,
        target,
        op,
        prefix: load.prefix,
        conns: load.conns.max(1),
        stop: match load.count {
            Some(n) => Stop::Count(n),
            None => Stop::After(Duration::from_secs_f64(load.duration)),
        },
        first_index: load.first_index,
    }
}

fn write_op(load: &Load) -> Op {
    Op::Write {
        value_bytes: load.value_bytes,
    }
}

fn read_op(load: &Load) -> Op {
    Op::Read { keys: load.keys }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::FreePort = cli.cmd {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        println!("{}", l.local_addr()?.port());
        return Ok(());
    }
    // The closed-loop loads run on one thread: its clients only wait on their sockets, and a
    // second worker only adds wake-ups between the two (three alternations on 2026-12-04: 1
    // connection p50 0.313-0.327 against 0.310-0.348 ms; 64 connections 30,771-34,267
    // against 29,968-31,495 writes/s, with less CPU). The lag figure keeps two workers beside
    // its samplers' own threads, as it was measured.
    let closed_loop = matches!(
        cli.cmd,
        Cmd::BunkerWrite { .. }
            | Cmd::BunkerRead { .. }
            | Cmd::EtcdWrite { .. }
            | Cmd::EtcdRead { .. }
    );
    let rt = if closed_loop {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    };
    let report = rt.block_on(async {
        match cli.cmd {
            Cmd::BunkerWrite { load, token } => {
                let op = write_op(&load);
                drive::run(plan(load, Target::Bunker { token }, op)).await
            }
            Cmd::BunkerRead { load, token } => {
                let op = read_op(&load);
                drive::run(plan(load, Target::Bunker { token }, op)).await
            }
            Cmd::EtcdWrite { load } => {
                let op = write_op(&load);
                drive::run(plan(load, Target::Etcd, op)).await
            }
            Cmd::EtcdRead { load } => {
                let op = read_op(&load);
                drive::run(plan(load, Target::Etcd, op)).await
            }
            Cmd::Lag {
                primary,
                secondary,
                token,
                rate,
                duration,
                conns,
                value_bytes,
                prefix,
                sample_ms,
                probe_every,
            } => {
                lag::run(lag::LagPlan {
                    sample_every: Duration::from_secs_f64(sample_ms.max(0.0) / 1000.0),
                    probe_every,
                    primary,
                    secondary,
                    token,
                    rate,
                    duration: Duration::from_secs_f64(duration),
                    conns: conns.max(1),
                    value_bytes,
                    prefix,
                })
                .await
            }
            Cmd::Promote {
                secondary,
                key,
                token,
            } => promote::run(&secondary, &key, &token).await,
            Cmd::Status { addr, count } => status::run(&addr, count).await,
            Cmd::FreePort => unreachable_free_port(),
        }
    })?;
    println!("{report}");
    Ok(())
}

/// `FreePort` returns before the runtime starts.
fn unreachable_free_port() -> Result<serde_json::Value> {
    anyhow::bail!("free-port is handled before the runtime starts")
}
