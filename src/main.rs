use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use mediafs::cli::{CacheAction, Cli, Command};

fn init_logging(level: &str, file: Option<&std::path::Path>) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("mediafs={level},fuser=error,warn"))
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("log file {}: {e}", path.display()))?;
            builder
                .with_writer(std::sync::Mutex::new(f))
                .with_ansi(false)
                .init();
        }
        // journald and pipes get plain text; a terminal gets colour.
        None => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Mount(args) => mediafs::mount::run(*args),
        Command::Check(args) => mediafs::check::run(args),
        Command::Import(args) => mediafs::import::run(args),
        Command::Unmount { mountpoint, lazy } => mediafs::mount::unmount(&mountpoint, lazy),
        Command::Cache { action } => {
            let report = match action {
                CacheAction::Stats { cache_dir } => mediafs::cache::admin::stats(&cache_dir),
                CacheAction::Clear { cache_dir } => mediafs::cache::admin::clear(&cache_dir),
            }?;
            print!("{report}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if mediafs::helper::invoked_as_helper(argv.first()) {
        let args = argv[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return ExitCode::from(mediafs::helper::main(args));
    }
    let cli = Cli::parse();
    let result = init_logging(&cli.log_level, cli.log_file.as_deref()).and_then(|()| run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mediafs: error: {e}");
            ExitCode::FAILURE
        }
    }
}
