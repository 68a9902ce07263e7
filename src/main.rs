use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use mediafs::cli::{CacheAction, Cli, Command};

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("mediafs={level},fuser=error,warn"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Mount(args) => mediafs::mount::run(args),
        Command::Unmount { mountpoint, lazy } => mediafs::mount::unmount(&mountpoint, lazy),
        Command::Cache { action } => match action {
            CacheAction::Stats { cache_dir } => {
                let (files, bytes) = mediafs::cache::dir_usage(&cache_dir)
                    .map_err(|e| format!("{}: {e}", cache_dir.display()))?;
                println!("cache directory: {}", cache_dir.display());
                println!("files: {files}");
                println!("bytes: {bytes}");
                Ok(())
            }
            CacheAction::Clear { cache_dir } => {
                let data = cache_dir.join("data");
                if data.exists() {
                    std::fs::remove_dir_all(&data)
                        .map_err(|e| format!("{}: {e}", data.display()))?;
                }
                println!("cleared {}", cache_dir.display());
                Ok(())
            }
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mediafs: error: {e}");
            ExitCode::FAILURE
        }
    }
}
