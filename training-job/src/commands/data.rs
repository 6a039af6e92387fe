//! `mlops data fetch|validate`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mlops_domain::data::validate_csv;
use mlops_domain::hashing::{ContentDigest, DigestingReader, DvcManifest};
use mlops_domain::schema::Schema;

use crate::config::{Settings, load_schema, locate_data};
use crate::progress;

/// Data-set commands.
#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Download a data set from its canonical URL (or copy --from FILE) into the cache and verify
    /// its SHA-256.
    Fetch {
        /// Data-set name (california_housing, telco_churn) or schema file.
        name: String,
        /// Use this local copy instead of downloading.
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Validate a data file against its schema and print the report.
    Validate {
        /// Data-set name or schema file.
        name: String,
        /// Data file (default: found in MLOPS_DATA, ../shared/data beside the checkout or the working directory, or the download cache).
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

/// Runs a data command.
pub async fn run(command: DataCommand, settings: &Settings) -> Result<()> {
    match command {
        DataCommand::Fetch { name, from } => {
            let schema = load_schema(&name)?;
            let path = fetch(&schema, from.as_deref(), settings).await?;
            println!("{}", path.display());
            Ok(())
        }
        DataCommand::Validate { name, data } => {
            let schema = load_schema(&name)?;
            let path = locate_data(&schema, data.as_deref(), settings)?;
            let report = validate_csv(&path, &schema)?;
            println!("{report}");
            let digest = ContentDigest::of_file(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            println!(
                "\nDVC manifest:\n{}",
                DvcManifest::for_file(&file_name(&path), &digest).to_yaml()
            );
            if !report.is_valid() {
                let report = Box::new(report);
                return Err(mlops_domain::data::DataError::Invalid { report }.into());
            }
            Ok(())
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Puts the schema's data file into the cache, verified against the schema's SHA-256; returns
/// its path. Writes a `.dvc` manifest beside it.
pub async fn fetch(schema: &Schema, from: Option<&Path>, settings: &Settings) -> Result<PathBuf> {
    let source = schema
        .source
        .as_ref()
        .with_context(|| format!("schema '{}' names no source", schema.name))?;
    let cache = settings.data_cache();
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create {}", cache.display()))?;
    let target = cache.join(&source.file);
    let partial = cache.join(format!(".{}.partial", source.file));
    let digest = match from {
        Some(local) => {
            let mut reader = DigestingReader::new(
                std::fs::File::open(local)
                    .with_context(|| format!("cannot open {}", local.display()))?,
            );
            let mut out = std::fs::File::create(&partial)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            std::io::copy(&mut reader, &mut out)
                .with_context(|| format!("copying {}", local.display()))?;
            out.sync_all()?;
            reader.finish()
        }
        None => download(&source.url, &partial).await?,
    };
    if digest.sha256 != source.sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "{}: SHA-256 mismatch: expected {}, got {} ({} bytes); the file was not kept",
            from.map_or(source.url.clone(), |p| p.display().to_string()),
            source.sha256,
            digest.sha256,
            digest.size
        );
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("cannot move into {}", target.display()))?;
    let dvc = cache.join(format!("{}.dvc", source.file));
    std::fs::write(&dvc, DvcManifest::for_file(&source.file, &digest).to_yaml())
        .with_context(|| format!("cannot write {}", dvc.display()))?;
    eprintln!(
        "verified {} (sha256 {}, {} bytes)",
        target.display(),
        digest.sha256,
        digest.size
    );
    Ok(target)
}

async fn download(url: &str, to: &Path) -> Result<ContentDigest> {
    let mut response = reqwest::get(url)
        .await
        .with_context(|| format!("cannot download {url}"))?
        .error_for_status()
        .with_context(|| format!("cannot download {url}"))?;
    let bar = progress::bytes(response.content_length(), &format!("downloading {url}"));
    let mut out =
        std::fs::File::create(to).with_context(|| format!("cannot write {}", to.display()))?;
    let mut size = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("download of {url} broke off"))?
    {
        out.write_all(&chunk)?;
        size += chunk.len() as u64;
        bar.set_position(size);
    }
    out.sync_all()?;
    bar.finish_and_clear();
    ContentDigest::of_file(to).with_context(|| format!("cannot read back {}", to.display()))
}
