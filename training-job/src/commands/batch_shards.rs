//! `batch-predict --shards N`: one batch-prediction job spread over the children of an AWS
//! Batch array job, with the output a single container would write, byte for byte.
//!
//! - **Plan.** The first child to start takes a lease on `_shards.lock` (create-only, renewed by
//!   compare-and-swap while it plans), reads the input once, cutting it into parts by the rule a
//!   single run uses ([`JobRun::plan`]), and writes where each part starts to `_shards.json`,
//!   create-only; the parts are dealt out to the shards in contiguous runs. The other children
//!   wait for the plan, and take the lease over if it is not renewed (a planner that died). A
//!   plan for another job or another N is refused.
//! - **Shards.** Shard `i` (`AWS_BATCH_JOB_ARRAY_INDEX`) writes its parts as a single run resumed
//!   at its first part would: `part-NNNNN.csv` keeps its global number, rows and lines keep
//!   theirs. It has its own checkpoint (`_checkpoint-IIIII.json`) with its own fencing
//!   generation, so a killed child retried by AWS Batch resumes after its last committed part.
//! - **Manifest.** Each child, once its shard is complete, reads every shard's checkpoint; the one
//!   that finds them all complete writes `_checkpoint.json` (the job's, as a single run leaves
//!   it) create-only. Two children finishing together write the same bytes; a child that dies
//!   before writing it is retried and writes it then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mlops_domain::hashing::sha256_hex;
use mlops_domain::jobs::{
    Checkpoint, JobQueue, JobState, JobSubmission, SHARD_PLAN, SHARD_PLAN_LOCK, ShardPlan,
    shard_checkpoint_name,
};
use mlops_domain::store::{ETag, PutCondition, StoreError};

use crate::lease;
use crate::write_once::write_once;
use tokio::runtime::Handle;

use super::batch_predict::{CHECKPOINT, JobRun, ShardSlice, Summary, another_job};

/// How long the planner's lease on the plan lasts without a renewal: a child that finds it older
/// takes the planning over.
pub(crate) const PLAN_LEASE: Duration = Duration::from_secs(60);
/// How often a waiting child looks for the plan.
const PLAN_POLL: Duration = Duration::from_millis(500);

/// Who holds the planner's lease: the child's shard, so that a retry of the child that died
/// planning takes its lease back at once, and no other child does (process ids repeat across
/// containers).
fn holder(shards: u32, index: u32) -> String {
    format!("shard {index} of {shards}")
}

/// How a shard's run ended.
pub(crate) struct ShardOutcome {
    /// The shard's own run.
    pub shard: Summary,
    /// The job's checkpoint, when every shard is complete (this child or another wrote it).
    pub job: Option<Checkpoint>,
}

/// Runs shard `index` of `shards` (on a blocking thread): the plan if none is written yet (a
/// planner's `lease`, [`PLAN_LEASE`] but in tests), the shard's parts, then the job's checkpoint
/// if this shard was the last to finish.
pub(crate) fn run_shard(
    mut job: JobRun,
    (shards, index): (u32, u32),
    lease: Duration,
    handle: &Handle,
) -> Result<ShardOutcome> {
    if index >= shards {
        bail!(
            "shard index {index} is out of range: --shards {shards} has shards 0 to {}",
            shards - 1
        );
    }
    if let Some(done) = job_checkpoint(&job, handle)? {
        return Ok(ShardOutcome {
            shard: Summary::AlreadyComplete(done.clone()),
            job: Some(done),
        });
    }
    let plan = plan(&job, (shards, index), lease, handle)?;
    job.shard = Some(ShardSlice {
        index,
        start: plan.shards[index as usize],
        end: plan.end_of(index),
    });
    let shard = job.run(handle)?;
    let job = manifest(&job, &plan, handle)?;
    Ok(ShardOutcome { shard, job })
}

/// The job's checkpoint if the job is complete; an error if a single-container run owns it.
fn job_checkpoint(job: &JobRun, handle: &Handle) -> Result<Option<Checkpoint>> {
    let key = job.output.key(CHECKPOINT);
    let Some(object) = handle.block_on(job.output.store.get(&key))? else {
        return Ok(None);
    };
    let location = job.output.store.uri(&key);
    let checkpoint: Checkpoint = serde_json::from_slice(&object.bytes)
        .with_context(|| format!("{location} is not a valid checkpoint"))?;
    if checkpoint.fingerprint != job.fingerprint {
        return Err(another_job(&location));
    }
    if !checkpoint.complete {
        bail!(
            "{location}: a run of this job without --shards wrote part of this output; finish it without --shards, or start again with --overwrite"
        );
    }
    Ok(Some(checkpoint))
}

/// The job's plan: the one written, or one this child makes under the planner's lease, or the one
/// another child makes while this one waits.
fn plan(
    job: &JobRun,
    (shards, index): (u32, u32),
    lease: Duration,
    handle: &Handle,
) -> Result<ShardPlan> {
    let me = holder(shards, index);
    let key = job.output.key(SHARD_PLAN);
    let location = job.output.store.uri(&key);
    let read = |bytes: &[u8]| -> Result<ShardPlan> {
        let plan: ShardPlan = serde_json::from_slice(bytes)
            .with_context(|| format!("{location} is not a valid shard plan"))?;
        if plan.fingerprint != job.fingerprint {
            return Err(another_job(&location));
        }
        if plan.shards.len() != shards as usize {
            bail!(
                "{location}: this output was started with --shards {}, not {shards}; run it with --shards {0}, or start again with --overwrite",
                plan.shards.len()
            );
        }
        Ok(plan)
    };
    let mut waiting = false;
    loop {
        if let Some(object) = handle.block_on(job.output.store.get(&key))? {
            return read(&object.bytes);
        }
        if let Some(lock) = take_lock(job, &me, lease, handle)? {
            return make_plan(job, shards, (&me, lock), lease, handle);
        }
        if !waiting {
            eprintln!("waiting for the plan another child is making ({location})");
            waiting = true;
        }
        std::thread::sleep(PLAN_POLL);
    }
}

/// Takes the planner's lease (as `me`): free, not renewed for `lease`, or this shard's own from
/// a run that died. `None` while another child holds it.
fn take_lock(job: &JobRun, me: &str, lease: Duration, handle: &Handle) -> Result<Option<ETag>> {
    let store = job.output.store.as_ref();
    let key = job.output.key(SHARD_PLAN_LOCK);
    let seen = handle.block_on(lease::read(store, &key))?;
    Ok(handle.block_on(lease::take(store, &key, me, lease, seen.as_ref()))?)
}

/// Makes the plan under the lease (renewed as it reads), writes it create-only, and frees the
/// lease.
fn make_plan(
    job: &JobRun,
    shards: u32,
    (me, mut lock): (&str, ETag),
    lease: Duration,
    handle: &Handle,
) -> Result<ShardPlan> {
    let store = &job.output.store;
    let (key, lock_key) = (job.output.key(SHARD_PLAN), job.output.key(SHARD_PLAN_LOCK));
    let started = Instant::now();
    let mut renewed = Instant::now();
    let plan = job.plan(handle, shards, &mut || {
        if renewed.elapsed() >= lease / 4 {
            // A lease lost to a child that took over is not an error: both make the same plan.
            let renewal = lease::renew(store.as_ref(), &lock_key, me, &lock);
            if let Ok(Some(etag)) = handle.block_on(renewal) {
                lock = etag;
            }
            renewed = Instant::now();
        }
    })?;
    eprintln!(
        "planned {} rows in {} parts over {shards} shards ({:.2} s to read {} bytes)",
        plan.end.rows_before,
        plan.end.part,
        started.elapsed().as_secs_f64(),
        plan.input_bytes
    );
    // A child that took the lease over may have written it first: then that one (the same).
    let plan = handle.block_on(write_once(store.as_ref(), &key, plan, "shard plan"))?;
    handle.block_on(store.delete(&lock_key))?;
    Ok(plan)
}

/// Writes the job's checkpoint once every shard is complete; `None` while some are not.
fn manifest(job: &JobRun, plan: &ShardPlan, handle: &Handle) -> Result<Option<Checkpoint>> {
    let mut shards = Vec::with_capacity(plan.shards.len());
    for index in 0..plan.shards.len() as u32 {
        let key = job.output.key(&shard_checkpoint_name(index));
        shards.push(match handle.block_on(job.output.store.get(&key))? {
            Some(object) => Some(
                serde_json::from_slice::<Checkpoint>(&object.bytes).with_context(|| {
                    format!("{} is not a valid checkpoint", job.output.store.uri(&key))
                })?,
            ),
            None => None,
        });
    }
    let progress = plan.progress(&shards);
    if !progress.complete {
        return Ok(None);
    }
    let bytes = serde_json::to_vec_pretty(&progress)?;
    let key = job.output.key(CHECKPOINT);
    match handle.block_on(job.output.store.put(&key, bytes, PutCondition::IfAbsent)) {
        Ok(_) => Ok(Some(progress)),
        Err(StoreError::PreconditionFailed { .. }) => job_checkpoint(job, handle)?
            .map(Some)
            .with_context(|| format!("{} was not complete", job.output.store.uri(&key))),
        Err(e) => Err(e.into()),
    }
}

/// What a submission of a sharded job needs.
pub(crate) struct ArrayJob<'a> {
    pub queue: Arc<dyn JobQueue>,
    /// The `mlops batch-predict` arguments every child runs (with `--array-child`).
    pub command: Vec<String>,
    /// Output location and fingerprint: the job name is derived from them, so submitting the
    /// same job again while it runs finds it instead of starting a second one.
    pub output_uri: &'a str,
    pub fingerprint: &'a str,
    pub shards: u32,
}

/// Submits the array job (a single job for one shard) unless a job of the same name is still
/// in the queue; returns its queue id and whether this call submitted it.
pub(crate) async fn submit(array: ArrayJob<'_>) -> Result<(String, bool)> {
    let name = format!(
        "mlops-batch-predict-{}",
        &sha256_hex(format!("{}\n{}", array.output_uri, array.fingerprint).as_bytes())[..24]
    );
    if let Some(id) = array.queue.find(&name).await? {
        let status = array.queue.status(&id).await?;
        if status.is_some_and(|s| matches!(s.state, JobState::Queued | JobState::Running)) {
            return Ok((id, false));
        }
    }
    let id = array
        .queue
        .submit(&JobSubmission {
            name,
            command: array.command,
            environment: Vec::new(),
            array_size: (array.shards > 1).then_some(array.shards),
        })
        .await?;
    Ok((id, true))
}
