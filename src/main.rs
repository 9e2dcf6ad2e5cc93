//! The `benchwarden` binary: parse the command line, resolve settings, set
//! up the reporter, build the runtime, call the subcommand, print the error
//! chain, exit with the documented code.

use std::process::ExitCode;

use benchwarden::app;
use benchwarden::cli::{CleanupCommand, Cli, Command};
use benchwarden::errors::{error_chain, Error, ExitStatus};
use benchwarden::report;
use benchwarden::settings::{
    ClaimSettings, CleanupAllSettings, DaytonaCleanupSettings, DockerCleanupSettings, GlobalSettings, ListSettings,
    PruneSettings, RecoverSettings, RunSettings, StatusSettings, SweepSettings,
};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let status = match run(cli) {
        Ok(status) => status,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            error.exit_status()
        }
    };
    ExitCode::from(status.code() as u8)
}

fn run(cli: Cli) -> Result<ExitStatus, Error> {
    let global = GlobalSettings::resolve(&cli.global)?;
    report::init_logging(&global.output);
    let session = app::Session::new(&global);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|source| Error::Io {
        what: "start the async runtime for",
        path: "benchwarden".into(),
        source,
    })?;
    runtime.block_on(async {
        match cli.command {
            Command::List(args) => app::list(&global, &ListSettings::resolve(&args)?, &session).await,
            Command::Cleanup(CleanupCommand::Daytona(args)) => {
                app::cleanup_daytona(&global, &DaytonaCleanupSettings::resolve(&args)?, &session).await
            }
            Command::Cleanup(CleanupCommand::Docker(args)) => {
                app::cleanup_docker(&global, &DockerCleanupSettings::resolve(&args)?, &session).await
            }
            Command::Cleanup(CleanupCommand::All(args)) => {
                app::cleanup_all(&global, &CleanupAllSettings::resolve(&args, &global)?, &session).await
            }
            Command::Run(args) => app::run(&global, &RunSettings::resolve(&args, &global)?, &session).await,
            Command::Recover(args) => app::recover(&global, &RecoverSettings::resolve(&args), &session).await,
            Command::Sweep(args) => app::sweep(&global, &SweepSettings::resolve(&args, &global)?, &session).await,
            Command::Status(args) => app::status(&global, &StatusSettings::resolve(&args)).await,
            Command::Prune(args) => app::prune(&global, &PruneSettings::resolve(&args)?, &session).await,
            Command::Claim(args) => app::claim(&global, &ClaimSettings::resolve(&args)?).await,
        }
    })
}
