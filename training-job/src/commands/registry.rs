//! `mlops registry list|show|promote|rollback|card|traffic|audit`. Collections print as text
//! tables with a header, single records (`show`, `card`) as JSON documents; `--json` makes every
//! command print JSON on stdout (what scripts and `jq` read), messages staying on stderr.

use anyhow::{Result, bail};
use mlops_domain::registry::{AliasEvent, CHAMPION, CardEdit, Registry, RegistryError};

use crate::config::Settings;

/// `mlops registry`: the command and the output format.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Print JSON on stdout (every registry command).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: RegistryCommand,
}

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
    /// Point an alias at a version (given by number or by another alias, e.g.
    /// `promote MODEL challenger --alias champion`).
    Promote {
        /// Model name.
        model: String,
        /// Version number or alias.
        version: String,
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
    /// Write the engine image (the compiled model serving loads without parsing) of versions
    /// registered without one, or whose image an engine upgrade made stale. New versions get
    /// theirs when they are registered.
    Compile {
        /// Model name.
        model: String,
        /// Version numbers or aliases (default: every version).
        versions: Vec<String>,
    },
}

/// Gives one version an engine image unless it has a usable one; says what it did.
async fn compile_image(registry: &Registry, model: &str, version: u64) -> Result<String> {
    use mlops_engine::Predictor;
    use mlops_engine::image::{file_name, has_image};
    let bundle = registry.version(model, version).await?.bundle_ref();
    let parts = registry.serving_parts(&bundle, file_name()).await?;
    let manifest = &parts.manifest;
    if let Some(image) = &parts.image {
        let stale = match Predictor::from_fetched_image(manifest, image) {
            Ok(_) => return Ok("has a usable engine image".into()),
            Err(e) => e,
        };
        // The bundle's name for this engine's image is taken (create-only): the operator learns
        // why serving compiles the model file instead.
        bail!(
            "its engine image cannot be used ({stale}); serving compiles the model file instead. \
             Images are immutable: retrain or re-register the version to get a new one"
        );
    }
    if !has_image(manifest.model_kind) {
        return Ok(format!(
            "{} models load from their native file (no image needed)",
            manifest.model_kind
        ));
    }
    let model_bytes = registry
        .bundle_file(&bundle, manifest, &manifest.model_file)
        .await?;
    let image = Predictor::from_model_file(manifest, &model_bytes)?
        .model
        .image(&model_bytes)
        .ok_or_else(|| anyhow::anyhow!("the engine has no image for this model"))?;
    let size = image.len();
    Ok(if registry.add_image(&bundle, file_name(), image).await? {
        format!("engine image written ({size} bytes)")
    } else {
        "an engine image was written meanwhile".into()
    })
}

/// Checks that a model exists, naming the known ones when it does not.
pub async fn ensure_model(registry: &Registry, model: &str) -> Result<()> {
    mlops_domain::registry::check_name("model", model)?;
    let known = registry.models().await?;
    if known.iter().any(|m| m == model) {
        return Ok(());
    }
    if known.is_empty() {
        bail!(
            "no such model '{model}': no model is registered in {} yet (train one with `mlops train`)",
            registry.store().describe()
        );
    }
    bail!("no such model '{model}' (known: {})", known.join(", "))
}

/// Resolves a version number or alias of an existing model.
pub async fn resolve_version(
    registry: &Registry,
    model: &str,
    version_or_alias: &str,
) -> Result<u64> {
    ensure_model(registry, model).await?;
    if let Ok(v) = version_or_alias.parse::<u64>() {
        registry.version(model, v).await?;
        return Ok(v);
    }
    match registry.resolve(model, version_or_alias).await {
        Ok(v) => Ok(v),
        Err(RegistryError::NotFound(_)) => {
            let aliases = registry.aliases(model).await?.aliases;
            let known: Vec<String> = aliases.iter().map(|(a, v)| format!("{a}→v{v}")).collect();
            let versions = registry.version_numbers(model).await?;
            bail!(
                "model '{model}' has no alias '{version_or_alias}' ({}; versions {})",
                if known.is_empty() {
                    "no aliases yet".to_string()
                } else {
                    format!("aliases: {}", known.join(", "))
                },
                describe_range(&versions)
            )
        }
        Err(e) => Err(e.into()),
    }
}

fn describe_range(versions: &[u64]) -> String {
    match (versions.first(), versions.last()) {
        (Some(a), Some(b)) if a == b => format!("v{a}"),
        (Some(a), Some(b)) => format!("v{a}–v{b}"),
        _ => "none".into(),
    }
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).expect("serializes")
}

/// Rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Prints [`table`].
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", table(header, rows));
}

fn alias_change(model: &str, e: &AliasEvent, as_json: bool) {
    if as_json {
        println!("{}", json(e));
    } else {
        println!(
            "{model}: {} {:?} {} → v{} (revision {})",
            e.alias,
            e.action,
            e.from.map_or("unset".into(), |f| format!("v{f}")),
            e.to,
            e.revision
        );
    }
}

/// Runs a registry command.
pub async fn run(args: RegistryArgs, settings: &Settings) -> Result<()> {
    let registry = settings.registry().await?;
    let as_json = args.json;
    match args.command {
        RegistryCommand::List { model: None } => list_models(&registry, as_json).await?,
        RegistryCommand::List { model: Some(model) } => {
            ensure_model(&registry, &model).await?;
            list_versions(&registry, &model, as_json).await?;
        }
        RegistryCommand::Show { model, version } => show(&registry, &model, &version).await?,
        RegistryCommand::Promote {
            model,
            version,
            alias,
            by,
            reason,
        } => {
            let version = resolve_version(&registry, &model, &version).await?;
            let e = registry
                .promote(&model, &alias, version, &by, &reason)
                .await?;
            alias_change(&model, &e, as_json);
        }
        RegistryCommand::Rollback {
            model,
            alias,
            by,
            reason,
            request_id,
        } => {
            ensure_model(&registry, &model).await?;
            let e = registry
                .rollback(&model, &alias, &by, &reason, request_id.as_deref())
                .await?;
            alias_change(&model, &e, as_json);
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
            ensure_model(&registry, &model).await?;
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
            ensure_model(&registry, &model).await?;
            traffic(&registry, &model, split, &by, as_json).await?;
        }
        RegistryCommand::Compile { model, versions } => {
            ensure_model(&registry, &model).await?;
            let numbers = if versions.is_empty() {
                registry.version_numbers(&model).await?
            } else {
                let mut out = Vec::new();
                for v in &versions {
                    out.push(resolve_version(&registry, &model, v).await?);
                }
                out
            };
            let mut results = Vec::new();
            for version in numbers {
                let outcome = compile_image(&registry, &model, version).await?;
                eprintln!("{model} v{version}: {outcome}");
                results.push(serde_json::json!({"version": version, "image": outcome}));
            }
            if as_json {
                println!("{}", json(&results));
            }
        }
        RegistryCommand::Audit { model } => {
            ensure_model(&registry, &model).await?;
            let history = registry.aliases(&model).await?.history;
            if as_json {
                println!("{}", json(&history));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = history
                .iter()
                .map(|e| {
                    vec![
                        format!("#{}", e.revision),
                        e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        e.alias.clone(),
                        format!("{:?}", e.action).to_lowercase(),
                        e.from.map_or("unset".into(), |f| format!("v{f}")),
                        format!("v{}", e.to),
                        e.actor.clone(),
                        e.reason.clone(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "REV", "AT (UTC)", "ALIAS", "ACTION", "FROM", "TO", "BY", "REASON",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

async fn list_models(registry: &Registry, as_json: bool) -> Result<()> {
    let models = registry.models().await?;
    let mut rows = Vec::new();
    let mut docs = Vec::new();
    for m in models {
        let aliases = registry.aliases(&m).await?.aliases;
        let n = registry.version_numbers(&m).await?.len();
        let listed: Vec<String> = aliases.iter().map(|(a, v)| format!("{a}→v{v}")).collect();
        rows.push(vec![m.clone(), n.to_string(), listed.join(" ")]);
        docs.push(serde_json::json!({"model": m, "versions": n, "aliases": aliases}));
    }
    if as_json {
        println!("{}", json(&docs));
    } else if rows.is_empty() {
        eprintln!("no models registered in {}", registry.store().describe());
    } else {
        print_table(&["MODEL", "VERSIONS", "ALIASES"], &rows);
    }
    Ok(())
}

async fn list_versions(registry: &Registry, model: &str, as_json: bool) -> Result<()> {
    let aliases = registry.aliases(model).await?.aliases;
    let versions = registry.versions(model).await?;
    let tags_of = |version: u64| -> Vec<String> {
        aliases
            .iter()
            .filter(|(_, n)| **n == version)
            .map(|(a, _)| a.clone())
            .collect()
    };
    if as_json {
        let docs: Vec<serde_json::Value> = versions
            .iter()
            .map(|v| {
                let mut doc = serde_json::to_value(v).expect("serializes");
                doc["aliases"] = serde_json::json!(tags_of(v.version));
                doc
            })
            .collect();
        println!("{}", json(&docs));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            let metrics: Vec<String> = v
                .metrics
                .iter()
                .map(|(k, x)| format!("{k}={x:.4}"))
                .collect();
            vec![
                format!("v{}", v.version),
                v.model_kind.name().to_string(),
                v.registered_at.format("%Y-%m-%d %H:%M").to_string(),
                metrics.join(" "),
                tags_of(v.version).join(","),
            ]
        })
        .collect();
    print_table(
        &["VERSION", "KIND", "REGISTERED (UTC)", "METRICS", "ALIASES"],
        &rows,
    );
    Ok(())
}

/// `registry show`: a version with its card and the aliases on it. Asked for the champion of a
/// model that has none yet, it says so and shows the latest version.
async fn show(registry: &Registry, model: &str, version: &str) -> Result<()> {
    ensure_model(registry, model).await?;
    let aliases = registry.aliases(model).await?.aliases;
    let v = match (version.parse::<u64>(), aliases.get(version)) {
        (Ok(n), _) => n,
        (_, Some(&n)) => n,
        _ if version == CHAMPION => {
            let latest = registry
                .version_numbers(model)
                .await?
                .last()
                .copied()
                .ok_or_else(|| anyhow::anyhow!("model '{model}' has no versions"))?;
            eprintln!(
                "{model} has no champion yet; showing the latest version, v{latest} \
                 (approve its card and promote it: `mlops registry promote {model} {latest}`)"
            );
            latest
        }
        // An unknown alias: the same message as every other command gives.
        _ => resolve_version(registry, model, version).await?,
    };
    let record = registry.version(model, v).await?;
    let card = registry.card(model, v).await?;
    let on_version: Vec<&String> = aliases
        .iter()
        .filter(|(_, n)| **n == v)
        .map(|(a, _)| a)
        .collect();
    println!(
        "{}",
        json(&serde_json::json!({"version": record, "card": card, "aliases": on_version}))
    );
    Ok(())
}

async fn traffic(
    registry: &Registry,
    model: &str,
    split: Option<String>,
    by: &str,
    as_json: bool,
) -> Result<()> {
    let current = match split {
        Some(spec) => {
            let split = mlops_domain::traffic::TrafficSplit::parse(&spec)?;
            Some(registry.set_traffic(model, &split, by).await?)
        }
        None => registry.traffic(model).await?,
    };
    let Some(t) = current else {
        if as_json {
            println!("null");
        }
        eprintln!("no traffic split: all traffic goes to the served alias (default {CHAMPION})");
        return Ok(());
    };
    if as_json {
        // Exactly the body `PUT /v1/models/{name}/traffic` takes.
        println!("{}", json(&t.weights_json()));
        return Ok(());
    }
    let aliases = registry.aliases(model).await?.aliases;
    let rows: Vec<Vec<String>> = t
        .percentages()
        .into_iter()
        .map(|(alias, p)| {
            let version = aliases
                .get(&alias)
                .map_or("unset".into(), |v| format!("v{v}"));
            vec![alias, format!("{p:.1}%"), version]
        })
        .collect();
    print_table(&["ALIAS", "TRAFFIC", "VERSION"], &rows);
    eprintln!(
        "revision {}, set by {}{}",
        t.revision,
        t.updated_by,
        t.updated_at
            .map_or(String::new(), |at| format!(" at {}", at.to_rfc3339()))
    );
    Ok(())
}
