//! What the dashboard and `/metrics` read, and the waits and retries the
//! dashboard's HTTP API asks for; each call holds the task lock only while
//! it copies what it needs.

use std::collections::HashMap;
use std::sync::Arc;

use super::{State, Tasks};
use crate::server::bounds::Bound;
use crate::server::endpoint::Replier;
use crate::server::monitor::{live_state, TaskSummary};
use crate::server::offered_schemas::Offer;
use crate::wire::protocol::{ClusterStatus, ErrorReply, Submit, TaskId, TaskReport, TaskState};

/// One reading of the live tasks and the subworkers.
pub(crate) struct LiveView {
    /// By priority (most urgent first): [queued, running, prefetched,
    /// scheduled, retrying]. A run sent to a subworker is *prefetched*
    /// until the subworker reports that a thread started it, *running*
    /// after.
    pub(crate) counts: [[u32; 5]; 4],
    /// By subworker id: [running, prefetched].
    pub(crate) on_workers: HashMap<String, [u32; 2]>,
    /// The subworkers and their health.
    pub(crate) cluster: ClusterStatus,
}

/// Counts the live tasks: by priority and state, and by subworker.
fn count_live(tasks: &Tasks) -> ([[u32; 5]; 4], HashMap<String, [u32; 2]>) {
    let mut counts = [[0; 5]; 4];
    let mut on_workers: HashMap<String, [u32; 2]> = HashMap::new();
    for (_, task) in tasks.ledger.tasks() {
        let column = match task.report.state {
            TaskState::Queued => 0,
            TaskState::Running => {
                // Sent to a subworker: started once it says so.
                let prefetched = task.prefetched();
                if task.dispatch.is_some() {
                    on_workers.entry(task.report.worker.clone()).or_default()[usize::from(prefetched)] += 1;
                }
                if prefetched {
                    2
                } else {
                    1
                }
            }
            TaskState::Scheduled => 3,
            TaskState::Retrying => 4,
            _ => continue,
        };
        counts[task.report.priority.index()][column] += 1;
    }
    (counts, on_workers)
}

impl State {
    /// Summaries of at most `limit` live tasks that `keep` accepts (given
    /// each one's report and its state as shown, [`live_state`]), newest first.
    pub(crate) fn live_summaries(
        &self,
        limit: usize,
        keep: impl Fn(&TaskReport, &'static str) -> bool,
    ) -> Vec<TaskSummary> {
        let tasks = self.lock();
        let mut live: Vec<TaskSummary> = tasks
            .ledger
            .tasks()
            .map(|(_, t)| t)
            .filter(|t| keep(&t.report, live_state(t)))
            .take(limit)
            .map(TaskSummary::live)
            .collect();
        drop(tasks);
        live.sort_by_key(|t| std::cmp::Reverse(t.created_ms));
        live
    }

    /// A live task's report, its arguments and its state as shown
    /// ([`live_state`]).
    pub(crate) fn live_task(&self, task_id: TaskId) -> Option<(TaskReport, Arc<Vec<u8>>, &'static str)> {
        self.lock().ledger.get(&task_id).map(|t| (t.reported(), t.args.clone(), live_state(t)))
    }

    /// Live tasks by priority (most urgent first), each as
    /// [queued, running, prefetched, scheduled, retrying] (see [`LiveView`]).
    pub(crate) fn live_counts(&self) -> [[u32; 5]; 4] {
        count_live(&self.lock()).0
    }

    /// The live tasks by priority and state, the subworkers, and what each
    /// runs and holds prefetched, read under one lock so that the
    /// dashboard's cards and rows agree.
    pub(crate) fn live_view(&self) -> LiveView {
        let tasks = self.lock();
        let (counts, on_workers) = count_live(&tasks);
        let mut cluster = tasks.ledger.cluster().status();
        drop(tasks);
        if let Some(watch) = self.crashes.get() {
            cluster.worker_processes = watch.processes();
        }
        LiveView { counts, on_workers, cluster }
    }

    /// What `bound` limits, in use now, where this state knows it.
    pub(crate) fn usage(&self, bound: Bound) -> Option<u64> {
        let tasks = self.lock();
        let (workers, slots) = tasks.ledger.cluster().size();
        let (live, live_bytes) = tasks.ledger.load();
        match bound {
            Bound::QueuedTasks => Some(live as u64),
            // Per tenant: the largest share held now.
            Bound::QueueShare => Some(tasks.ledger.largest_tenant_load() as u64),
            Bound::QueuedBytes => Some(live_bytes),
            Bound::CachedBytes => {
                drop(tasks);
                Some(self.cache.lock().expect("cache lock").bytes())
            }
            Bound::Subworkers => Some(workers as u64),
            Bound::SubworkerSlots => Some(slots as u64),
            Bound::Schedules => {
                drop(tasks);
                self.scheduler.as_ref().map(|scheduler| scheduler.len() as u64)
            }
            Bound::CallbackQueue => {
                drop(tasks);
                Some(self.callbacks.len() as u64)
            }
            _ => None,
        }
    }

    /// Results the cache holds now.
    pub(crate) fn cached_results(&self) -> usize {
        self.cache.lock().expect("cache lock").len()
    }

    /// The schemas a submission of `task_name` is checked against: those of
    /// this process's plugin, or else those the first live subworker that
    /// provides it offered.
    pub(crate) fn task_schema(&self, task_name: &str) -> Option<Arc<crate::plugins::task_schema::TaskSchema>> {
        if let Some(task) = self.registry.get(task_name) {
            return task.schema.clone();
        }
        let from = self.lock().ledger.cluster().describing_provider(task_name)?.0;
        self.offered_schemas.get(task_name, from, || {
            let tasks = self.lock();
            let (key, offer) = tasks.ledger.cluster().describing_provider(task_name)?;
            Some(Offer { key, text: offer.args_schema.clone().zip(offer.result_schema.clone()) })
        })
    }

    /// The tasks the plugins here and the live subworkers provide, sorted
    /// by name, with their schemas (`Request::Tasks`, the HTTP API).
    pub(crate) fn registered_tasks(&self) -> Vec<crate::wire::protocol::TaskInfo> {
        let mut rows: std::collections::BTreeMap<String, crate::wire::protocol::TaskInfo> = self
            .registry
            .tasks()
            .into_iter()
            .map(|task| {
                let options = &task.decl.options;
                let info = crate::wire::protocol::TaskInfo {
                    name: task.decl.name.to_string(),
                    doc: task.decl.doc.to_string(),
                    signature: task.decl.signature.to_string(),
                    priority: options.priority,
                    timeout_ms: options.timeout_ms,
                    max_retries: options.max_retries,
                    args_schema: task.schema.as_ref().map(|s| s.args.to_string()),
                    result_schema: task.schema.as_ref().map(|s| s.result.to_string()),
                    providers: vec![self.config.worker_id.clone()],
                };
                (info.name.clone(), info)
            })
            .collect();
        let offered = self.lock().ledger.cluster().offered_tasks();
        for (worker_id, offer) in offered {
            let row = rows.entry(offer.name.clone()).or_insert_with(|| crate::wire::protocol::TaskInfo {
                name: offer.name.clone(),
                priority: offer.priority,
                timeout_ms: offer.timeout_ms,
                max_retries: offer.max_retries,
                doc: offer.doc.clone(),
                signature: offer.signature.clone(),
                args_schema: offer.args_schema.clone(),
                result_schema: offer.result_schema.clone(),
                providers: Vec::new(),
            });
            row.providers.push(worker_id);
        }
        rows.into_values().collect()
    }

    /// Answers `replier` when the task ends (at once with its report or why
    /// it is unknown, when it is not live): the HTTP API's wait.
    pub(crate) fn wait_for(&self, task_id: TaskId, replier: Replier) {
        let mut tasks = self.lock();
        if let Some(waiters) = tasks.ledger.waiters_mut(&task_id) {
            // Waits that gave up (their bound passed) leave; so a client
            // waiting again and again on a long task leaves no trail.
            waiters.retain(|waiter| !waiter.is_abandoned());
            waiters.push(replier);
            return;
        }
        drop(tasks);
        match self.cached(task_id) {
            (crate::server::cache::Lookup::Found(report), record) => {
                let mut outbox = super::Outbox::default();
                self.answer_ended(replier, report, record, &mut outbox);
                outbox.deliver();
            }
            _ => replier.send(&self.status(task_id)),
        }
    }

    /// Accepts a task the dashboard submits (a retry under a fresh id).
    pub(crate) fn accept_from_dashboard(&self, submit: Submit) -> Result<TaskId, ErrorReply> {
        self.accept(submit, None, super::Admitted::default(), None).map_err(|(refusal, _)| refusal)
    }
}
