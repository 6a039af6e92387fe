//! `mlops keys create|list|revoke`: API keys for the serving API. Keys live as SHA-256 hashes in
//! the Secrets Manager secret `--secret` (on AWS) or in `HOME/api-keys.json` (embedded default).
//! A new key is printed once and stored nowhere.

use std::sync::Arc;

use anyhow::{Result, bail};
use mlops_domain::apikeys::{KeyStore, Scope};

use crate::config::Settings;

/// Key commands.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// Secrets Manager secret holding the key set (default: a file in HOME).
    #[arg(long, global = true, env = "MLOPS_API_KEYS_SECRET")]
    pub secret: Option<String>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Create a key and print it (once).
    Create {
        /// Who or what the key is for.
        #[arg(long)]
        name: String,
        /// Scopes: predict, admin (repeat or comma-separate).
        #[arg(long, value_delimiter = ',', default_value = "predict")]
        scope: Vec<String>,
    },
    /// List keys (ids, names, scopes, dates; never the keys).
    List,
    /// Revoke a key by id.
    Revoke {
        /// Key id (the 12 hex digits after `mlk_`).
        id: String,
    },
}

/// The key store the settings name.
pub async fn key_store(secret: Option<&str>, settings: &Settings) -> Arc<dyn KeyStore> {
    match secret {
        Some(s) => {
            let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
            let config = mlops_aws::sdk_config(endpoint.as_deref()).await;
            Arc::new(mlops_aws::SecretsKeyStore::new(&config, s))
        }
        None => Arc::new(mlops_store::FileKeyStore::new(
            &settings.home.join("api-keys.json"),
        )),
    }
}

/// Runs a keys command.
pub async fn run(args: KeysArgs, settings: &Settings) -> Result<()> {
    let store = key_store(args.secret.as_deref(), settings).await;
    let mut keys = store.load().await?;
    match args.command {
        KeysCommand::Create { name, scope } => {
            let scopes = scope
                .iter()
                .map(|s| Scope::parse(s.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            let key = keys.create(&name, &scopes)?;
            store.save(&keys).await?;
            let record = keys.keys.last().expect("just created");
            eprintln!(
                "created key {} ({}) with scopes {} in {}; it is shown only now:",
                record.id,
                record.name,
                record
                    .scopes
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(","),
                store.describe()
            );
            println!("{key}");
        }
        KeysCommand::List => {
            if keys.keys.is_empty() {
                eprintln!("no keys in {}", store.describe());
            }
            for k in &keys.keys {
                println!(
                    "{}  {:<20} {:<14} created {}  {}",
                    k.id,
                    k.name,
                    k.scopes
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(","),
                    k.created_at.format("%Y-%m-%d %H:%M"),
                    k.revoked_at.map_or("active".into(), |r| format!(
                        "revoked {}",
                        r.format("%Y-%m-%d %H:%M")
                    ))
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !keys.keys.iter().any(|k| k.id == id) {
                bail!("no key with id '{id}' in {}", store.describe());
            }
            keys.revoke(&id)?;
            store.save(&keys).await?;
            eprintln!("revoked key {id}");
        }
    }
    Ok(())
}
