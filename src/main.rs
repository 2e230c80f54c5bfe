//! `zkgate`: the binary. Parses the command line and `gateway.toml`, then hands the supervisor
//! its settings and the worker its part (see `app.rs`). Errors get their context here.

mod alloc;
mod app;
mod checks;
mod config;
mod edge_checks;
mod fleet;
mod keys;
mod rollout;
mod status;
mod summary;

/// The allocator for the supervisor and every worker (see Cargo.toml for why mimalloc, and
/// `alloc.rs` for how it is asked). The supervisor allocates only from its single thread, so
/// forking stays safe.
#[global_allocator]
static ALLOCATOR: alloc::Mimalloc = alloc::Mimalloc;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// An HTTP gateway that finds its backends in ZooKeeper, run as a pre-fork server.
#[derive(Parser)]
#[command(name = "zkgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: a supervisor and its workers. Signals: TERM/INT graceful stop, QUIT fast
    /// stop, HUP reload, TTIN/TTOU one worker more/less.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Check a configuration file and print what it configures (exit 1 if it is invalid).
    Check {
        /// Configuration file.
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// The fleet's configuration releases in ZooKeeper (needs [fleet] in the file).
    Config {
        /// This host's configuration file (names the ensemble and the fleet).
        #[arg(short, long, default_value = "gateway.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        verb: fleet::Verb,
    },
    /// API keys of a `type = "key"` section: add (prints the new key once), list, revoke.
    Key {
        /// Configuration file (names the section's keys file).
        #[arg(short, long, default_value = "gateway.toml", global = true)]
        config: PathBuf,
        #[command(subcommand)]
        verb: keys::Verb,
    },
    /// Register an instance in ZooKeeper (as an ephemeral node, in the configured format) and keep
    /// it registered until TERM/INT, then remove it.
    Register {
        /// Configuration file (its [zookeeper] section says where and in which format).
        #[arg(short, long, default_value = "gateway.toml")]
        config: PathBuf,
        /// Service name.
        #[arg(long)]
        service: String,
        /// Instance address, host:port.
        #[arg(long)]
        address: String,
        /// Weight (written by formats that carry one: nerve).
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
}

fn main() -> ExitCode {
    // One process-wide TLS provider, ring (see Cargo.toml): the ZooKeeper client's TLS asks
    // rustls for the default, which two compiled-in providers would leave undecided.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The log format is the configuration's (`[log] format`): known once `run` has read it.
    let json = match &cli.command {
        Command::Run { config } => {
            config::load(config).is_ok_and(|c| c.log.format == worker::config::LogFormat::Json)
        }
        _ => false,
    };
    init_logging(json);
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => check(config),
        Command::Config { config, verb } => fleet::run(&config, verb),
        Command::Key { config, verb } => keys::run(&config, verb),
        Command::Register { config, service, address, weight } => {
            register(config, &service, &address, weight)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("zkgate: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `info` by default, `RUST_LOG` to change it; every line carries the pid, since several
/// processes write to the same stream. rustls's own lines only from `error` by default: it
/// warns once per handshake about what clients send (an IP address as SNI, as wrk and many
/// health checkers do), which is nothing an operator can act on and a line per connection. `json`: one object per line (`ts`, `level`, `pid`,
/// `target` — `access` for the access log — and `msg`).
fn init_logging(json: bool) {
    let mut builder = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,rustls=error"),
    );
    if json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": buf.timestamp_micros().to_string(),
                "level": record.level().as_str(),
                "pid": std::process::id(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    } else {
        builder.format(|buf, record| {
            writeln!(
                buf,
                "{} {:5} [{}] {}",
                buf.timestamp_micros(),
                record.level(),
                std::process::id(),
                record.args()
            )
        });
    }
    builder.init();
}

fn check(path: PathBuf) -> anyhow::Result<u8> {
    let config = config::load(&path)?;
    let tls = config::load_tls(&path, &config)?;
    print!("{}", summary::summary(&config, tls.as_ref()));
    println!("{}: configuration is valid", path.display());
    Ok(0)
}

fn run(path: PathBuf) -> anyhow::Result<u8> {
    let config = config::load(&path)?;
    let settings = config::supervisor_settings(&config);
    let tls = config::load_tls(&path, &config)?;
    let gateway = app::Gateway::new(path.clone(), config, tls)?;
    let code = supervisor::run(settings, gateway)
        .with_context(|| format!("starting with {}", path.display()))?;
    Ok(u8::try_from(code).unwrap_or(1))
}

fn register(path: PathBuf, service: &str, address: &str, weight: u32) -> anyhow::Result<u8> {
    let config = config::load(&path)?;
    // The first source: `register` writes where the one-source form reads.
    let zk = config
        .zookeeper
        .into_iter()
        .next()
        .with_context(|| format!("{}: register needs a [zookeeper] section", path.display()))?;
    let (host, port) =
        worker::discovery::register::split_address(address).map_err(anyhow::Error::msg)?;
    if service.is_empty() || service.contains('/') {
        anyhow::bail!("invalid service name {service:?}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        };
        worker::discovery::register::register(&zk, service, &host, port, weight, stop).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}
