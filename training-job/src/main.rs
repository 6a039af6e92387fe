//! `mlops`: data validation, training, registry and local prediction for tabular models.

mod commands;
mod config;
#[cfg(feature = "train")]
mod device;
mod exit;
mod lease;
mod local_queue;
#[cfg(feature = "train")]
mod monitor;
mod progress;
mod write_once;

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
    /// Feature store: definitions, offline snapshots, point-in-time training sets.
    Features(commands::features::FeaturesArgs),
    /// Train candidates, select the best, register it.
    #[cfg(feature = "train")]
    Train(Box<commands::train::TrainArgs>),
    /// Model registry: versions, aliases, cards, audit log.
    Registry(commands::registry::RegistryArgs),
    /// Predict rows from CSV or JSON with a registered model.
    Predict(commands::predict::PredictArgs),
    /// Train on California Housing, register, promote and predict, on the local default.
    #[cfg(feature = "train")]
    Quickstart(commands::quickstart::QuickstartArgs),
    /// Serve the prediction API on localhost (the Lambda functions' routes).
    Serve(commands::serve::ServeArgs),
    /// Create, list and revoke API keys.
    Keys(commands::keys::KeysArgs),
    /// Run a training job from a TOML spec (the AWS Batch entry point).
    #[cfg(feature = "train")]
    Job(commands::job::JobArgs),
    /// Predict a CSV from S3 or disk in resumable, checkpointed parts (the batch-prediction job).
    BatchPredict(commands::batch_predict::BatchPredictArgs),
    /// Drift, live quality and alerts over a window of logged predictions and their feedback,
    /// per served version, against its training data.
    Monitor(commands::monitor::MonitorArgs),
    /// Ground-truth labels for served predictions: import a file of them.
    Feedback(commands::feedback::FeedbackArgs),
    /// A/B tests between served variants: `mlops ab report`.
    Ab(commands::monitor::AbArgs),
    /// Submit the training job to AWS Batch, once per trigger window, optionally with the
    /// labelled production rows added to its data.
    Retrain(commands::retrain::RetrainArgs),
    /// A training command in a build without training (the batch-prediction image).
    #[cfg(not(feature = "train"))]
    #[command(external_subcommand)]
    NotInThisBuild(Vec<String>),
    /// Print a shell completion script (e.g. `mlops completions bash > /etc/bash_completion.d/mlops`).
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

/// Logs on stderr. `serve` writes one JSON object per event at `info` (a line per request with
/// its id, route, status, latency, model, version and variant); other commands write warnings
/// as text. `MLOPS_LOG_FORMAT=json|text` and `RUST_LOG` override; colour only on a terminal.
fn init_logging(serving: bool) {
    use std::io::IsTerminal;
    let default = if serving { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = match std::env::var("MLOPS_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => serving,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false)
            .init();
    } else {
        builder.init();
    }
}

/// Why a command is missing from a build without the `train` feature.
#[cfg(not(feature = "train"))]
fn not_in_this_build(args: &[String]) -> anyhow::Error {
    let name = args.first().map_or("", String::as_str);
    let hint = if ["train", "job", "quickstart"].contains(&name) {
        "it trains models, and this build has no trainer (the batch-prediction image, built \
         without the `train` feature): run it with the training image or a default build"
    } else {
        "no such command (see `mlops --help`)"
    };
    anyhow::Error::new(exit::ExitWith {
        code: 2,
        message: format!("error: `mlops {name}`: {hint}"),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve(_)));
    let result = match cli.command {
        Command::Data(c) => commands::data::run(c, &cli.settings).await,
        Command::Features(a) => commands::features::run(a, &cli.settings).await,
        #[cfg(feature = "train")]
        Command::Train(a) => commands::train::run(&a, &cli.settings).await,
        Command::Registry(c) => commands::registry::run(c, &cli.settings).await,
        Command::Predict(a) => commands::predict::run(a, &cli.settings).await,
        #[cfg(feature = "train")]
        Command::Quickstart(a) => commands::quickstart::run(a, &cli.settings).await,
        Command::Serve(a) => commands::serve::run(a, &cli.settings).await,
        Command::Keys(a) => commands::keys::run(a, &cli.settings).await,
        #[cfg(feature = "train")]
        Command::Job(a) => commands::job::run(a, &cli.settings).await,
        Command::BatchPredict(a) => commands::batch_predict::run(a, &cli.settings).await,
        Command::Monitor(a) => commands::monitor::run(a, &cli.settings).await,
        Command::Feedback(a) => commands::feedback::run(a, &cli.settings).await,
        Command::Ab(a) => commands::monitor::run_ab(a, &cli.settings).await,
        Command::Retrain(a) => commands::retrain::run(a, &cli.settings).await,
        #[cfg(not(feature = "train"))]
        Command::NotInThisBuild(args) => Err(not_in_this_build(&args)),
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
