//! `mlops quickstart`: train on California Housing, register, approve, promote to champion,
//! predict a few held-out rows, then serve the champion over HTTP (the Lambda functions' router,
//! on localhost) and predict through the API — all on the embedded local default.

use std::path::PathBuf;

use anyhow::Result;
use mlops_domain::data::Value;
use mlops_domain::registry::{CHAMPION, CardEdit};

use crate::commands::data::fetch;
use crate::commands::predict::predict_rows;
use crate::commands::train::{TrainArgs, train};
use crate::config::{Settings, load_schema, locate_data};

/// Arguments of `mlops quickstart`.
#[derive(Debug, clap::Args)]
pub struct QuickstartArgs {
    /// California Housing CSV (default: found in MLOPS_DATA or ../shared/data, else downloaded and verified).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// Runs the quickstart.
pub async fn run(args: QuickstartArgs, settings: &Settings) -> Result<()> {
    let schema = load_schema("california_housing")?;
    let data = match locate_data(&schema, args.data.as_deref(), settings) {
        Ok(p) => p,
        Err(_) if args.data.is_none() => {
            println!(
                "california_housing.csv not found locally; downloading it from its canonical URL"
            );
            fetch(&schema, None, settings).await?
        }
        Err(e) => return Err(e),
    };
    println!("== 1. train on {} (80/20 split, seed 42)", data.display());
    let trained = train(
        &TrainArgs {
            dataset: "california_housing".into(),
            features: Vec::new(),
            entities: None,
            time_column: "event_timestamp".into(),
            data: Some(data),
            model_name: None,
            seed: 42,
            test_fraction: 0.2,
            cv_folds: None,
            candidates: vec!["linear".into(), "xgboost".into(), "lightgbm".into()],
            device: "cpu".into(),
            search_minutes: None,
            search_trials: None,
            search_workers: None,
            search_worker_index: None,
            search_claim_seconds: 60.0,
            telemetry_seconds: 5.0,
            experiment: None,
            out: None,
            idempotency_key: None,
            promote: None,
            gate_margin: None,
            gate_data: None,
            intended_use: None,
            limitations: None,
            cloudwatch_namespace: None,
            registered_by: "quickstart".into(),
        },
        settings,
    )
    .await?;
    let model = trained.version.model.clone();
    let version = trained.version.version;

    println!("\n== 2. model card and approval");
    let registry = settings.registry().await?;
    registry
        .edit_card(
            &model,
            version,
            CardEdit {
                intended_use: Some(
                    "Demo: estimate the median house value of a 1990 California block group."
                        .into(),
                ),
                limitations: Some(
                    "1990 census data; values capped at 500,001 USD; not for real valuations."
                        .into(),
                ),
                ..Default::default()
            },
        )
        .await?;
    registry
        .approve_card(&model, version, "quickstart", "approved by the quickstart")
        .await?;
    println!("card of {model} v{version} approved");

    println!("\n== 3. promote v{version} to {CHAMPION}");
    let event = registry
        .promote(&model, CHAMPION, version, "quickstart", "quickstart")
        .await?;
    println!(
        "{CHAMPION} → v{} (audit revision {})",
        event.to, event.revision
    );

    println!("\n== 4. predict 5 held-out rows with {model}@{CHAMPION}");
    let champion = registry.resolve(&model, CHAMPION).await?;
    let bundle = registry
        .load_bundle(&registry.version(&model, champion).await?)
        .await?;
    let test = &trained.outcome.test_data;
    let rows: Vec<_> = test.rows.iter().take(5).cloned().collect();
    let predictions = predict_rows(&bundle, &rows)?;
    let unit = &bundle.manifest.schema.target.unit;
    println!(
        "{:>6}  {:>10}  {:>10}   ({unit})",
        "line", "actual", "predicted"
    );
    for ((line, actual), p) in test.lines.iter().zip(&test.labels).zip(&predictions) {
        println!("{line:>6}  {actual:>10.3}  {p:>10.3}");
    }

    println!("\n== 5. serve {model}@{CHAMPION} over HTTP and predict 3 rows through the API");
    let state = mlops_serving::AppState::start(
        registry.clone(),
        mlops_serving::ServeConfig {
            models: Some(vec![model.clone()]),
            ..Default::default()
        },
        None,
    )
    .await;
    let app = mlops_serving::router(state.clone(), mlops_serving::RouteSet::ALL);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let records: Vec<serde_json::Value> = test
        .rows
        .iter()
        .take(3)
        .map(|row| {
            test.feature_columns
                .iter()
                .zip(row)
                .map(|(c, v)| {
                    let json = match v {
                        Value::Number(x) => serde_json::json!(x),
                        Value::Category(s) => serde_json::json!(s),
                        Value::Missing => serde_json::Value::Null,
                    };
                    (c.name.clone(), json)
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect();
    let url = format!("http://{addr}/v1/models/{model}/predict");
    println!("POST {url}\n{}", serde_json::to_string(&records[0])?);
    let response = reqwest::Client::new()
        .post(&url)
        .json(&records)
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    println!("{status}\n{}", serde_json::to_string_pretty(&body)?);
    server.abort();
    if let Some(log) = &state.predictions_log {
        log.flush().await;
    }
    anyhow::ensure!(status.is_success(), "the API answered {status}");
    let mlops = settings.command_prefix();
    println!(
        "\nDone. Report: {}\nNext:\n  {mlops} keys create --name me --scope admin   # serve needs a key\n  \
         {mlops} serve                                  # API on http://127.0.0.1:8080, explorer at /docs\n  \
         {mlops} registry list {model}\n  \
         {mlops} predict {model} --csv rows.csv",
        trained.artifact_dir.join("report/report.md").display()
    );
    Ok(())
}
