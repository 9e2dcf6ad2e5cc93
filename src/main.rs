//! The `benchwarden` binary: parse the command line, resolve settings, build
//! the runtime, call the subcommand, print the error chain, exit with the
//! documented code.

use std::process::ExitCode;

use benchwarden::cli::{CleanupCommand, Cli, Command};
use benchwarden::errors::{Error, ExitStatus};
use benchwarden::settings::{DaytonaCleanupSettings, DockerCleanupSettings, GlobalSettings, ListSettings, RunSettings};
use benchwarden::{app, report};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let status = match run(cli) {
        Ok(status) => status,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_status()
        }
    };
    ExitCode::from(status.code() as u8)
}

fn run(cli: Cli) -> Result<ExitStatus, Error> {
    let global = GlobalSettings::resolve(&cli.global)?;
    report::init_logging(&global.output);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|source| Error::Io {
        what: "start the async runtime for",
        path: "benchwarden".into(),
        source,
    })?;
    runtime.block_on(async {
        match cli.command {
            Command::List(args) if args.daytona => app::list_daytona(&ListSettings::resolve(&args)?).await,
            Command::List(args) => app::list(&global, &ListSettings::resolve(&args)?).await,
            Command::Cleanup(CleanupCommand::Daytona(args)) => {
                app::cleanup_daytona(&global, &DaytonaCleanupSettings::resolve(&args)?).await
            }
            Command::Cleanup(CleanupCommand::Docker(args)) => {
                app::cleanup_docker(&global, &DockerCleanupSettings::resolve(&args)?).await
            }
            Command::Run(args) => app::run(&global, &RunSettings::resolve(&args, &global)?).await,
            Command::Recover(args) => app::recover(&global, args.dry_run, args.from_labels, args.json).await,
            Command::Status(args) => app::status(&global, args.json).await,
        }
    })
}
