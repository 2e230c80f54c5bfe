//! `zkgate`: the binary. Parses the command line and `gateway.toml`, then hands the supervisor
//! its settings and the worker its part (see `app.rs`). Errors get their context here.

mod app;
mod config;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;

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
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => check(config),
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
/// processes write to the same stream.
fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            writeln!(
                buf,
                "{} {:5} [{}] {}",
                buf.timestamp_millis(),
                record.level(),
                std::process::id(),
                record.args()
            )
        })
        .init();
}

fn check(path: PathBuf) -> anyhow::Result<u8> {
    let config = Config::load(&path)?;
    print!("{}", config.summary());
    println!("{}: configuration is valid", path.display());
    Ok(0)
}

fn run(path: PathBuf) -> anyhow::Result<u8> {
    let config = Config::load(&path)?;
    let settings = config.supervisor_settings();
    let gateway = app::Gateway { path: path.clone(), config };
    let code = supervisor::run(settings, gateway).with_context(|| format!("starting with {}", path.display()))?;
    Ok(u8::try_from(code).unwrap_or(1))
}
