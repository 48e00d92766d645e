//! The JSON Schemas of tasks that only subworkers provide, read from their
//! registrations when an HTTP submission first needs one, and kept while
//! the worker they came from still describes the task.
//!
//! A registration carries each schema as text (bounded per registration,
//! `MAX_OFFERED_TEXT_BYTES`); parsing it, and building its validator, is
//! left until a submission is checked, so a cluster nobody submits to over
//! HTTP pays for neither. At most `capacity` tasks' schemas are kept.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::cluster::routing::WorkerKey;
use crate::plugins::task_schema::TaskSchema;

/// Parsed schemas of offered tasks, by task name.
pub(crate) struct OfferedSchemas {
    by_task: Mutex<LruCache<String, Parsed>>,
}

/// One task's schema, with the worker whose offer it was read from; `None`
/// when that offer has no schema, or one that is not JSON.
type Parsed = (WorkerKey, Option<Arc<TaskSchema>>);

/// A task's schemas as a worker offered them, as text.
pub(crate) struct Offer {
    /// The worker the offer is from.
    pub(crate) key: WorkerKey,
    /// Its argument and result schemas, when it sent both.
    pub(crate) text: Option<(String, String)>,
}

impl OfferedSchemas {
    /// Keeping at most `capacity` tasks' schemas.
    pub(crate) fn new(capacity: usize) -> OfferedSchemas {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        OfferedSchemas { by_task: Mutex::new(LruCache::new(capacity)) }
    }

    /// The schema of `task_name` as `from` describes it, parsed at most once
    /// per offering worker. `offer` reads the offer's text when it is not
    /// held already (it is called without this cache's lock).
    pub(crate) fn get(
        &self,
        task_name: &str,
        from: WorkerKey,
        offer: impl FnOnce() -> Option<Offer>,
    ) -> Option<Arc<TaskSchema>> {
        if let Some((key, schema)) = self.by_task.lock().expect("offered schema lock").get(task_name) {
            if *key == from {
                return schema.clone();
            }
        }
        let Offer { key, text } = offer()?;
        let schema = text.and_then(|(args, result)| TaskSchema::from_text(task_name, &args, &result)).map(Arc::new);
        self.by_task.lock().expect("offered schema lock").put(task_name.to_string(), (key, schema.clone()));
        schema
    }
}
