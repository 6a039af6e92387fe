//! `mlops registry list|show|promote|rollback|card|audit`.

use anyhow::Result;
use mlops_domain::registry::{CHAMPION, CardEdit, Registry};

use crate::config::Settings;

/// Registry commands.
#[derive(Debug, clap::Subcommand)]
pub enum RegistryCommand {
    /// List models, or the versions of one model.
    List {
        /// Model name.
        model: Option<String>,
    },
    /// Show one version (number or alias) with its lineage, metrics and card.
    Show {
        /// Model name.
        model: String,
        /// Version number or alias (default: champion).
        #[arg(default_value = CHAMPION)]
        version: String,
    },
    /// Point an alias at a version.
    Promote {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
        /// Alias to move.
        #[arg(long, default_value = CHAMPION)]
        alias: String,
        /// Who does it.
        #[arg(long, env = "USER", default_value = "mlops")]
        by: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Return an alias to the version it pointed at before its latest promotion.
    Rollback {
        /// Model name.
        model: String,
        /// Alias to move back.
        #[arg(long, default_value = CHAMPION)]
        alias: String,
        /// Who does it.
        #[arg(long, env = "USER", default_value = "mlops")]
        by: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        /// An id for this rollback: rerunning the command with the same id (after a lost reply)
        /// reports the rollback it made instead of rolling back again.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show, edit or approve a model card (editing clears an approval).
    Card {
        /// Model name.
        model: String,
        /// Version number.
        version: u64,
        /// What the model is for.
        #[arg(long)]
        intended_use: Option<String>,
        /// Known limitations.
        #[arg(long)]
        limitations: Option<String>,
        /// Owner.
        #[arg(long)]
        owner: Option<String>,
        /// Approve the card.
        #[arg(long)]
        approve: bool,
        /// Approver (with --approve).
        #[arg(long, env = "USER", default_value = "mlops")]
        by: String,
        /// Approval note.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Show or set the A/B traffic split between aliases (e.g. champion=90,challenger=10);
    /// servers pick it up within their refresh interval.
    Traffic {
        /// Model name.
        model: String,
        /// New split, ALIAS=WEIGHT,…; omit to show the current one.
        split: Option<String>,
        /// Who does it.
        #[arg(long, env = "USER", default_value = "mlops")]
        by: String,
    },
    /// Print the audit log of alias changes.
    Audit {
        /// Model name.
        model: String,
    },
}

/// Resolves a version number or alias.
pub async fn resolve_version(
    registry: &Registry,
    model: &str,
    version_or_alias: &str,
) -> Result<u64> {
    Ok(match version_or_alias.parse::<u64>() {
        Ok(v) => v,
        Err(_) => registry.resolve(model, version_or_alias).await?,
    })
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).expect("serializes")
}

/// Runs a registry command.
pub async fn run(command: RegistryCommand, settings: &Settings) -> Result<()> {
    let registry = settings.registry().await?;
    match command {
        RegistryCommand::List { model: None } => {
            let models = registry.models().await?;
            if models.is_empty() {
                println!("no models registered in {}", registry.store().describe());
            }
            for m in models {
                let aliases = registry.aliases(&m).await?.aliases;
                let n = registry.versions(&m).await?.len();
                let aliases: Vec<String> =
                    aliases.iter().map(|(a, v)| format!("{a}→v{v}")).collect();
                println!("{m}  ({n} versions)  {}", aliases.join(" "));
            }
        }
        RegistryCommand::List { model: Some(model) } => {
            let aliases = registry.aliases(&model).await?.aliases;
            for v in registry.versions(&model).await? {
                let tags: Vec<&str> = aliases
                    .iter()
                    .filter(|(_, n)| **n == v.version)
                    .map(|(a, _)| a.as_str())
                    .collect();
                let metrics: Vec<String> = v
                    .metrics
                    .iter()
                    .map(|(k, x)| format!("{k}={x:.4}"))
                    .collect();
                println!(
                    "v{:<4} {:<9} {}  {}  {}",
                    v.version,
                    v.model_kind.name(),
                    v.registered_at.format("%Y-%m-%d %H:%M"),
                    metrics.join(" "),
                    tags.join(",")
                );
            }
        }
        RegistryCommand::Show { model, version } => {
            let v = resolve_version(&registry, &model, &version).await?;
            let record = registry.version(&model, v).await?;
            let card = registry.card(&model, v).await?;
            println!(
                "{}",
                json(&serde_json::json!({"version": record, "card": card}))
            );
        }
        RegistryCommand::Promote {
            model,
            version,
            alias,
            by,
            reason,
        } => {
            let e = registry
                .promote(&model, &alias, version, &by, &reason)
                .await?;
            println!(
                "{model}: {alias} {} → v{} (revision {})",
                e.from.map_or("unset".into(), |f| format!("v{f}")),
                e.to,
                e.revision
            );
        }
        RegistryCommand::Rollback {
            model,
            alias,
            by,
            reason,
            request_id,
        } => {
            let e = registry
                .rollback(&model, &alias, &by, &reason, request_id.as_deref())
                .await?;
            println!(
                "{model}: {alias} rolled back {} → v{} (revision {})",
                e.from.map_or("unset".into(), |f| format!("v{f}")),
                e.to,
                e.revision
            );
        }
        RegistryCommand::Card {
            model,
            version,
            intended_use,
            limitations,
            owner,
            approve,
            by,
            note,
        } => {
            let edit = CardEdit {
                intended_use,
                limitations,
                owner,
                training_data: None,
            };
            let mut card = if edit.intended_use.is_some()
                || edit.limitations.is_some()
                || edit.owner.is_some()
            {
                registry.edit_card(&model, version, edit).await?
            } else {
                registry.card(&model, version).await?
            };
            if approve {
                card = registry.approve_card(&model, version, &by, &note).await?;
            }
            println!("{}", json(&card));
        }
        RegistryCommand::Traffic { model, split, by } => {
            let current = match split {
                Some(spec) => {
                    let split = mlops_domain::traffic::TrafficSplit::parse(&spec)?;
                    Some(registry.set_traffic(&model, &split, &by).await?)
                }
                None => registry.traffic(&model).await?,
            };
            match current {
                Some(t) => {
                    // stdout: exactly what `PUT /v1/models/{name}/traffic` takes.
                    println!("{}", json(&t.weights_json()));
                    let shares: Vec<String> = t
                        .percentages()
                        .iter()
                        .map(|(alias, p)| format!("{alias} {p:.1}%"))
                        .collect();
                    eprintln!(
                        "revision {}: {} (set by {}{})",
                        t.revision,
                        shares.join(", "),
                        t.updated_by,
                        t.updated_at
                            .map_or(String::new(), |at| format!(" at {}", at.to_rfc3339()))
                    );
                }
                None => println!(
                    "no traffic split: all traffic goes to the served alias (default {CHAMPION})"
                ),
            }
        }
        RegistryCommand::Audit { model } => {
            for e in registry.aliases(&model).await?.history {
                println!(
                    "#{:<4} {}  {:<10} {:<8} {} → v{}  by {}  {}",
                    e.revision,
                    e.at.format("%Y-%m-%d %H:%M:%S"),
                    e.alias,
                    format!("{:?}", e.action).to_lowercase(),
                    e.from.map_or("unset".into(), |f| format!("v{f}")),
                    e.to,
                    e.actor,
                    e.reason
                );
            }
        }
    }
    Ok(())
}
