//! Deterministic fault injection for the state machines that write to the store or call a queue
//! (feature `test-support`).
//!
//! A [`FaultPlan`] counts the *steps* of one operation: every write to a store wrapped by
//! [`FaultPlan::store`] and every call to a queue wrapped by [`FaultPlan::queue`]. At the step it
//! is aimed at it injects one [`Fault`]:
//! - [`Fault::Fail`]: that step fails and is not applied; later steps run normally (a 500 from S3);
//! - [`Fault::Crash`]: that step and every later call of the operation fail, none applied (the
//!   process died before the step);
//! - [`Fault::LostAck`]: that step is applied, then it and every later call fail (the process died
//!   after the step, before it learnt the outcome).
//!
//! [`explore`] runs a [`CrashScenario`] once per step and fault on a fresh world, then runs its
//! recovery (the same call again, as a retry or AWS Batch's next attempt would) and checks its
//! invariants. It measures the steps on a fault-free run first, so a new write in a sequence is
//! covered without touching the test.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::jobs::{JobQueue, JobSubmission, QueueError, QueueStatus};
use crate::store::{ETag, ObjectStore, ObjectVersion, PutCondition, StoreError, StoredObject};

/// What happens at the step a plan is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The step fails without effect; the operation goes on.
    Fail,
    /// The step and every later call fail without effect.
    Crash,
    /// The step takes effect, then it and every later call fail.
    LostAck,
}

impl Fault {
    /// Every kind, in the order [`explore`] tries them.
    pub const ALL: [Fault; 3] = [Fault::Fail, Fault::Crash, Fault::LostAck];
}

#[derive(Debug, Default)]
struct PlanState {
    target: Option<(usize, Fault)>,
    steps: Vec<String>,
    dead: bool,
}

/// Counts an operation's steps and injects one fault; shared by every wrapper made from it.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    state: Arc<Mutex<PlanState>>,
}

/// What a wrapper does with one call.
enum Verdict {
    Run,
    RunThenFail,
    Refuse,
}

fn injected(what: &str) -> String {
    format!("injected fault at {what}")
}

impl FaultPlan {
    /// A plan that only counts.
    pub fn counting() -> Self {
        Self::default()
    }

    /// A plan that injects `fault` at step `step` (1-based).
    pub fn at(step: usize, fault: Fault) -> Self {
        let plan = Self::default();
        plan.lock().target = Some((step, fault));
        plan
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PlanState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The steps seen so far, labelled (`put KEY`, `queue submit NAME`…).
    pub fn steps(&self) -> Vec<String> {
        self.lock().steps.clone()
    }

    /// A read: refused once the operation has crashed.
    fn read(&self) -> bool {
        !self.lock().dead
    }

    /// A step: counted, and judged against the target.
    fn step(&self, label: String) -> Verdict {
        let mut s = self.lock();
        if s.dead {
            return Verdict::Refuse;
        }
        s.steps.push(label);
        let n = s.steps.len();
        match s.target {
            Some((at, fault)) if at == n => match fault {
                Fault::Fail => Verdict::Refuse,
                Fault::Crash => {
                    s.dead = true;
                    Verdict::Refuse
                }
                Fault::LostAck => {
                    s.dead = true;
                    Verdict::RunThenFail
                }
            },
            _ => Verdict::Run,
        }
    }

    /// `inner` with this plan's faults on its writes.
    pub fn store(&self, inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(FaultyStore {
            inner,
            plan: self.clone(),
        })
    }

    /// `inner` with this plan's faults on its writes (each `write` call is one step).
    pub fn online(
        &self,
        inner: Arc<dyn crate::online::OnlineStore>,
    ) -> Arc<dyn crate::online::OnlineStore> {
        Arc::new(FaultyOnline {
            inner,
            plan: self.clone(),
        })
    }

    /// `inner` with this plan's faults on its calls.
    pub fn queue(&self, inner: Arc<dyn JobQueue>) -> Arc<dyn JobQueue> {
        Arc::new(FaultyQueue {
            inner,
            plan: self.clone(),
        })
    }
}

/// A store whose writes count as steps of a [`FaultPlan`].
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: FaultPlan,
}

fn store_fault(operation: &'static str, key: &str) -> StoreError {
    StoreError::Backend {
        operation,
        key: key.into(),
        message: injected(operation),
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        if !self.plan.read() {
            return Err(store_fault("get", key));
        }
        self.inner.get(key).await
    }

    async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        condition: PutCondition,
    ) -> Result<ETag, StoreError> {
        match self.plan.step(format!("put {key}")) {
            Verdict::Run => self.inner.put(key, bytes, condition).await,
            Verdict::RunThenFail => {
                let _ = self.inner.put(key, bytes, condition).await;
                Err(store_fault("put", key))
            }
            Verdict::Refuse => Err(store_fault("put", key)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<(u64, ETag)>, StoreError> {
        if !self.plan.read() {
            return Err(store_fault("head", key));
        }
        self.inner.head(key).await
    }

    async fn get_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
        etag: &ETag,
    ) -> Result<Vec<u8>, StoreError> {
        if !self.plan.read() {
            return Err(store_fault("get", key));
        }
        self.inner.get_range(key, start, end, etag).await
    }

    async fn head_version(&self, key: &str) -> Result<Option<ObjectVersion>, StoreError> {
        if !self.plan.read() {
            return Err(store_fault("head", key));
        }
        self.inner.head_version(key).await
    }

    async fn get_range_version(
        &self,
        key: &str,
        start: u64,
        end: u64,
        version: &ObjectVersion,
    ) -> Result<Vec<u8>, StoreError> {
        if !self.plan.read() {
            return Err(store_fault("get", key));
        }
        self.inner.get_range_version(key, start, end, version).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        if !self.plan.read() {
            return Err(store_fault("list", prefix));
        }
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.plan.step(format!("delete {key}")) {
            Verdict::Run => self.inner.delete(key).await,
            Verdict::RunThenFail => {
                let _ = self.inner.delete(key).await;
                Err(store_fault("delete", key))
            }
            Verdict::Refuse => Err(store_fault("delete", key)),
        }
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn uri(&self, key: &str) -> String {
        self.inner.uri(key)
    }

    async fn presign_put(
        &self,
        key: &str,
        expires: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        if !self.plan.read() {
            return Err(store_fault("presign", key));
        }
        self.inner.presign_put(key, expires).await
    }
}

/// An online store whose writes count as steps of a [`FaultPlan`].
pub struct FaultyOnline {
    inner: Arc<dyn crate::online::OnlineStore>,
    plan: FaultPlan,
}

#[async_trait]
impl crate::online::OnlineStore for FaultyOnline {
    async fn write(
        &self,
        view: &str,
        rows: Vec<crate::online::OnlineRow>,
    ) -> Result<crate::online::Written, crate::online::OnlineError> {
        let fault = || crate::online::OnlineError::Backend {
            operation: "write",
            message: injected("online write"),
        };
        let n = rows.len();
        match self.plan.step(format!("online write {view} ({n} rows)")) {
            Verdict::Run => self.inner.write(view, rows).await,
            Verdict::RunThenFail => {
                let _ = self.inner.write(view, rows).await;
                Err(fault())
            }
            Verdict::Refuse => Err(fault()),
        }
    }

    async fn read(
        &self,
        view: &str,
        keys: &[String],
    ) -> Result<Vec<Option<crate::online::OnlineRow>>, crate::online::OnlineError> {
        if !self.plan.read() {
            return Err(crate::online::OnlineError::Backend {
                operation: "read",
                message: injected("online read"),
            });
        }
        self.inner.read(view, keys).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A queue whose calls count as steps of a [`FaultPlan`] (submissions and look-ups both change
/// what the caller knows, so both are crash points).
pub struct FaultyQueue {
    inner: Arc<dyn JobQueue>,
    plan: FaultPlan,
}

fn queue_fault(operation: &'static str) -> QueueError {
    QueueError {
        operation,
        message: injected(operation),
    }
}

#[async_trait]
impl JobQueue for FaultyQueue {
    async fn submit(&self, job: &JobSubmission) -> Result<String, QueueError> {
        match self.plan.step(format!("queue submit {}", job.name)) {
            Verdict::Run => self.inner.submit(job).await,
            Verdict::RunThenFail => {
                let _ = self.inner.submit(job).await;
                Err(queue_fault("submit"))
            }
            Verdict::Refuse => Err(queue_fault("submit")),
        }
    }

    async fn find(&self, name: &str) -> Result<Option<String>, QueueError> {
        match self.plan.step(format!("queue find {name}")) {
            Verdict::Run => self.inner.find(name).await,
            Verdict::RunThenFail | Verdict::Refuse => Err(queue_fault("find")),
        }
    }

    async fn status(&self, queue_job_id: &str) -> Result<Option<QueueStatus>, QueueError> {
        if !self.plan.read() {
            return Err(queue_fault("describe"));
        }
        self.inner.status(queue_job_id).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// An in-memory job queue that keeps every submission (the stand-in for AWS Batch in the crash
/// tests; the real adapter is tested against moto).
#[derive(Debug, Default)]
pub struct MemoryQueue {
    jobs: Mutex<Vec<(String, JobSubmission)>>,
}

impl MemoryQueue {
    /// Every submission so far, with the id it got.
    pub fn submissions(&self) -> Vec<(String, JobSubmission)> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl JobQueue for MemoryQueue {
    async fn submit(&self, job: &JobSubmission) -> Result<String, QueueError> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let id = format!("queue-job-{}", jobs.len() + 1);
        jobs.push((id.clone(), job.clone()));
        Ok(id)
    }

    async fn find(&self, name: &str) -> Result<Option<String>, QueueError> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        Ok(jobs
            .iter()
            .find(|(_, j)| j.name == name)
            .map(|(id, _)| id.clone()))
    }

    async fn status(&self, queue_job_id: &str) -> Result<Option<QueueStatus>, QueueError> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        Ok(jobs
            .iter()
            .any(|(id, _)| id == queue_job_id)
            .then(|| QueueStatus {
                state: crate::jobs::JobState::Queued,
                raw: "RUNNABLE".into(),
                reason: None,
            }))
    }

    fn describe(&self) -> String {
        "in-memory queue".into()
    }
}

/// An operation to crash at every step, with its recovery and invariants.
#[async_trait]
pub trait CrashScenario: Send + Sync {
    /// A fresh world (stores, queues, fixtures) for one run.
    type World: Send + Sync;
    /// Makes a fresh world.
    async fn world(&self) -> Self::World;
    /// The operation, with its writes and calls going through `plan`'s wrappers. It may fail.
    async fn run(&self, world: &Self::World, plan: &FaultPlan) -> Result<(), String>;
    /// The recovery, which must succeed: by default the same call again, without faults.
    async fn recover(&self, world: &Self::World) -> Result<(), String> {
        self.run(world, &FaultPlan::counting()).await
    }
    /// The invariants that must hold after the recovery.
    async fn check(&self, world: &Self::World) -> Result<(), String>;
}

/// The crash points [`explore`] enumerated.
#[derive(Debug, Clone)]
pub struct CrashReport {
    /// The steps of a fault-free run, labelled.
    pub steps: Vec<String>,
    /// How many (step, fault) runs converged: steps × 3.
    pub runs: usize,
}

impl std::fmt::Display for CrashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} crash points × {:?} = {} runs, all converged:",
            self.steps.len(),
            Fault::ALL,
            self.runs
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "  #{:<2} {s}", i + 1)?;
        }
        Ok(())
    }
}

/// Runs `scenario` fault-free to count its steps, then once per step and fault followed by its
/// recovery; returns the enumerated points, or the first run whose recovery or invariants failed.
pub async fn explore<S: CrashScenario>(scenario: &S) -> Result<CrashReport, String> {
    let world = scenario.world().await;
    let plan = FaultPlan::counting();
    scenario
        .run(&world, &plan)
        .await
        .map_err(|e| format!("the fault-free run failed: {e}"))?;
    scenario
        .check(&world)
        .await
        .map_err(|e| format!("the fault-free run broke an invariant: {e}"))?;
    let steps = plan.steps();
    if steps.is_empty() {
        return Err("the operation made no step to crash at".into());
    }
    let mut runs = 0;
    for n in 1..=steps.len() {
        for fault in Fault::ALL {
            let world = scenario.world().await;
            let plan = FaultPlan::at(n, fault);
            let outcome = scenario.run(&world, &plan).await;
            let at = format!("{fault:?} at step #{n} ({})", steps[n - 1]);
            if fault != Fault::Fail && outcome.is_ok() {
                return Err(format!(
                    "{at}: the operation reported success after a crash"
                ));
            }
            scenario
                .recover(&world)
                .await
                .map_err(|e| format!("{at}: the retry failed: {e}"))?;
            scenario
                .check(&world)
                .await
                .map_err(|e| format!("{at}: after the retry: {e}"))?;
            runs += 1;
        }
    }
    Ok(CrashReport { steps, runs })
}
