//! `mlops`: data validation, training, registry and local prediction for tabular models.

mod commands;
mod config;
mod device;
mod exit;
mod monitor;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "mlops",
    version,
    about = "Train, register and serve tabular models (local default; S3 and MLflow by configuration)"
)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Data sets: fetch and validate.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Train candidates, select the best, register it.
    Train(Box<commands::train::TrainArgs>),
    /// Model registry: versions, aliases, cards, audit log.
    Registry(commands::registry::RegistryArgs),
    /// Predict rows from CSV or JSON with a registered model.
    Predict(commands::predict::PredictArgs),
    /// Train on California Housing, register, promote and predict, on the local default.
    Quickstart(commands::quickstart::QuickstartArgs),
    /// Serve the prediction API on localhost (the Lambda functions' routes).
    Serve(commands::serve::ServeArgs),
    /// Create, list and revoke API keys.
    Keys(commands::keys::KeysArgs),
    /// Run a training job from a TOML spec (the AWS Batch entry point).
    Job(commands::job::JobArgs),
    /// Predict a CSV from S3 or disk in resumable, checkpointed parts (the batch-prediction job).
    BatchPredict(commands::batch_predict::BatchPredictArgs),
    /// Print a shell completion script (e.g. `mlops completions bash > /etc/bash_completion.d/mlops`).
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(c) => commands::data::run(c, &cli.settings).await,
        Command::Train(a) => commands::train::train(&a, &cli.settings).await.map(|_| ()),
        Command::Registry(c) => commands::registry::run(c, &cli.settings).await,
        Command::Predict(a) => commands::predict::run(a, &cli.settings).await,
        Command::Quickstart(a) => commands::quickstart::run(a, &cli.settings).await,
        Command::Serve(a) => commands::serve::run(a, &cli.settings).await,
        Command::Keys(a) => commands::keys::run(a, &cli.settings).await,
        Command::Job(a) => commands::job::run(a, &cli.settings).await,
        Command::BatchPredict(a) => commands::batch_predict::run(a, &cli.settings).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "mlops", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<exit::ExitWith>() {
            Some(status) => {
                eprintln!("{status}");
                ExitCode::from(status.code)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
