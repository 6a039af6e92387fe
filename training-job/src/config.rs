//! Where things live: the home directory, the store, the tracker and the data sets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mlops_domain::registry::Registry;
use mlops_domain::schema::Schema;
use mlops_domain::store::ObjectStore;
use mlops_domain::tracking::{RunReader, Tracker};
use mlops_tracking::{LocalRunLog, MlflowClient};

/// Schemas shipped with the binary (the files under `data/`).
pub const BUILTIN_SCHEMAS: &[(&str, &str)] = &[
    (
        "california_housing",
        include_str!("../../data/california_housing.schema.toml"),
    ),
    (
        "telco_churn",
        include_str!("../../data/telco_churn.schema.toml"),
    ),
];

/// The online store a URI names: `dynamodb://TABLE`, or none for the object store's.
pub async fn open_online_store(
    uri: Option<&str>,
    store: Arc<dyn ObjectStore>,
) -> Result<Arc<dyn mlops_domain::online::OnlineStore>> {
    match uri {
        None | Some("") => Ok(Arc::new(mlops_domain::online::StoreOnline::new(store))),
        Some(uri) => {
            let Some(table) = uri.strip_prefix("dynamodb://").filter(|t| !t.is_empty()) else {
                bail!(
                    "--online-store '{uri}': expected dynamodb://TABLE (or nothing for the store)"
                );
            };
            let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
            let config = mlops_aws::sdk_config(endpoint.as_deref()).await;
            Ok(Arc::new(mlops_aws::DynamoOnline::new(&config, table)))
        }
    }
}

/// Global settings from flags and environment (listed apart from a command's own options).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct Settings {
    /// Working directory for the embedded default (local store, run log, artifacts, data cache).
    #[arg(long, global = true, env = "MLOPS_HOME", default_value = ".mlops")]
    pub home: PathBuf,
    /// Registry store: a directory, or s3://bucket/prefix. Default: HOME/store.
    #[arg(long, global = true, env = "MLOPS_STORE")]
    pub store: Option<String>,
    /// S3 endpoint override (moto, MinIO); AWS_ENDPOINT_URL is honoured too.
    #[arg(long, global = true, env = "MLOPS_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Tracking: an MLflow server URL (http://…). Default: a local run log in HOME/runs.
    #[arg(long, global = true, env = "MLOPS_TRACKING_URI")]
    pub tracking: Option<String>,
    /// Online feature store: dynamodb://TABLE (endpoint from AWS_ENDPOINT_URL). Default: on the
    /// store, under features/online/.
    #[arg(long, global = true, env = "MLOPS_ONLINE_STORE")]
    pub online_store: Option<String>,
}

impl Settings {
    /// `mlops` with the global flags this invocation was given (`--home`, `--store`, S3
    /// endpoint, tracking), for printing commands a user can paste as they are.
    #[cfg(feature = "train")]
    pub fn command_prefix(&self) -> String {
        std::iter::once("mlops".to_string())
            .chain(self.global_args().iter().map(|a| shell_word(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The global flags this invocation was given, as arguments for a child `mlops`.
    pub fn global_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.home != Path::new(".mlops") {
            out.extend(["--home".to_string(), self.home.display().to_string()]);
        }
        for (flag, value) in [
            ("--store", &self.store),
            ("--s3-endpoint", &self.s3_endpoint),
            ("--tracking", &self.tracking),
            ("--online-store", &self.online_store),
        ] {
            if let Some(v) = value {
                out.extend([flag.to_string(), v.clone()]);
            }
        }
        out
    }

    /// The store URI in effect.
    pub fn store_uri(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| self.home.join("store").display().to_string())
    }

    /// Opens the store.
    pub async fn store(&self) -> Result<Arc<dyn ObjectStore>> {
        let uri = self.store_uri();
        mlops_store::open_store(&uri, self.s3_endpoint.clone())
            .await
            .with_context(|| format!("cannot open the store {uri}"))
    }

    /// Opens the online feature store.
    pub async fn online_store(&self) -> Result<Arc<dyn mlops_domain::online::OnlineStore>> {
        open_online_store(self.online_store.as_deref(), self.store().await?).await
    }

    /// Opens the registry on the store.
    pub async fn registry(&self) -> Result<Registry> {
        Ok(Registry::new(self.store().await?))
    }

    /// Opens the tracker: MLflow when configured (also via MLFLOW_TRACKING_URI), else the local run log.
    pub fn tracker(&self) -> Box<dyn Tracker> {
        match self.tracking_location() {
            Ok(url) => Box::new(MlflowClient::new(&url)),
            Err(dir) => Box::new(LocalRunLog::new(dir)),
        }
    }

    /// The same tracker, for reading runs back (the console's training page).
    pub fn run_reader(&self) -> Arc<dyn RunReader> {
        match self.tracking_location() {
            Ok(url) => Arc::new(MlflowClient::new(&url)),
            Err(dir) => Arc::new(LocalRunLog::new(dir)),
        }
    }

    /// An MLflow server's URL (`Ok`), or the run log's directory (`Err`).
    fn tracking_location(&self) -> Result<String, PathBuf> {
        let uri = self
            .tracking
            .clone()
            .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok());
        match uri {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(u),
            Some(dir) => Err(PathBuf::from(dir.strip_prefix("file://").unwrap_or(&dir))),
            None => Err(self.home.join("runs")),
        }
    }

    /// Directory of downloaded data sets.
    pub fn data_cache(&self) -> PathBuf {
        self.home.join("data")
    }
}

/// The commit of the code: `MLOPS_CODE_COMMIT` at run time, else the one embedded at build time.
#[cfg(feature = "train")]
pub fn code_commit() -> String {
    std::env::var("MLOPS_CODE_COMMIT").unwrap_or_else(|_| env!("MLOPS_BUILD_COMMIT").to_string())
}

/// The array index AWS Batch gives each child of an array job.
pub const ARRAY_INDEX: &str = "AWS_BATCH_JOB_ARRAY_INDEX";

/// This container's index among `children` (`what`: "shards", "search workers"): `given` by
/// hand (`option`), else as an array job's child; a single child runs as a plain job, without
/// an index. Out of range, it is refused, naming where it came from.
pub fn array_index(given: Option<u32>, children: u32, what: &str, option: &str) -> Result<u32> {
    let index = match (given, std::env::var(ARRAY_INDEX)) {
        (Some(index), _) => index,
        (None, Ok(text)) => text
            .trim()
            .parse()
            .with_context(|| format!("{ARRAY_INDEX}='{text}' is not an array index"))?,
        (None, Err(_)) if children == 1 => 0,
        (None, Err(_)) => bail!(
            "{ARRAY_INDEX} is not set: this job has {children} {what} and runs as an AWS Batch array job's children (or give {option})"
        ),
    };
    if index >= children {
        let from = match given {
            Some(_) => format!("{option} {index}"),
            None => format!("{ARRAY_INDEX}={index}"),
        };
        bail!(
            "{from} is out of range: {children} {what} are numbered 0 to {}",
            children - 1
        );
    }
    Ok(index)
}

/// Resolves a data-set name (a shipped schema) or a path to a schema file.
pub fn load_schema(name_or_path: &str) -> Result<Schema> {
    if let Some((_, text)) = BUILTIN_SCHEMAS.iter().find(|(n, _)| *n == name_or_path) {
        return Schema::from_toml(text, &format!("data/{name_or_path}.schema.toml"))
            .map_err(Into::into);
    }
    let path = Path::new(name_or_path);
    if path.exists() {
        return Ok(Schema::from_file(path)?);
    }
    let known: Vec<&str> = BUILTIN_SCHEMAS.iter().map(|(n, _)| *n).collect();
    bail!(
        "unknown data set '{name_or_path}': not one of {} and not a schema file",
        known.join(", ")
    )
}

/// Where data files are looked for, in order, all resolved when the command runs (nothing
/// compiled into the binary): `MLOPS_DATA`, `../shared/data` beside the git checkout that holds
/// the working directory, `../shared/data` from the working directory, then the download cache.
pub fn data_dirs(settings: &Settings) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("MLOPS_DATA").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(checkout) = cwd.ancestors().find(|a| a.join(".git").exists()) {
            dirs.push(checkout.join("../shared/data"));
        }
        let beside = cwd.join("../shared/data");
        if !dirs.contains(&beside) {
            dirs.push(beside);
        }
    }
    dirs.push(settings.data_cache());
    dirs
}

/// Finds the data file of a schema: `--data`, else the schema's file in the first of
/// [`data_dirs`] that has it.
pub fn locate_data(
    schema: &Schema,
    explicit: Option<&Path>,
    settings: &Settings,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.exists() {
            bail!("data file {} does not exist", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let source = schema.source.as_ref().with_context(|| {
        format!(
            "schema '{}' names no source file; pass --data FILE",
            schema.name
        )
    })?;
    let candidates: Vec<PathBuf> = data_dirs(settings)
        .into_iter()
        .map(|d| d.join(&source.file))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "data set '{}' not found (looked in {}); run `mlops data fetch {}`, set MLOPS_DATA to its directory, or pass --data FILE",
                schema.name,
                candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                schema.name
            )
        })
}

/// A word quoted for a POSIX shell when it needs to be.
#[cfg(feature = "train")]
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_given_by_hand_is_checked_against_the_children() {
        assert_eq!(
            array_index(Some(3), 4, "search workers", "--search-worker-index").unwrap(),
            3
        );
        let e = array_index(Some(4), 4, "search workers", "--search-worker-index")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--search-worker-index 4 is out of range: 4 search workers are numbered 0 to 3"
        );
    }
}
