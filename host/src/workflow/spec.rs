//! The workflow description clients write: a tree of tasks, chains, groups
//! and chords, built in Rust ([`task`], [`Workflow::chain`], ...) or read
//! from JSON ([`Workflow::from_json`], the format of `docs/workflows.md`),
//! and flattened into the [`WorkflowSubmit`] that travels.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::wire::protocol::Priority;
use crate::wire::workflow::{Receive, WorkflowId, WorkflowNode, WorkflowStep, WorkflowSubmit};

/// The deepest nesting a workflow may have (the root is at depth 1).
pub const MAX_DEPTH: usize = 32;

/// The most members (tasks) a workflow may have by default; a control
/// plane allows at most its `--max-queued-tasks`.
pub const MAX_MEMBERS: usize = 10_000;

/// A description that cannot be a workflow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workflow description: {0}")]
pub struct SpecError(pub String);

/// A workflow as a tree: what a client builds or reads from JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Workflow {
    /// One task (a member).
    Task(WorkflowStep),
    /// Run in order, each receiving the previous one's result.
    Chain(Vec<Workflow>),
    /// Run at once; the result is the list of results, in order.
    Group(Vec<Workflow>),
    /// A group, then a callback receiving the group's list of results.
    Chord(Vec<Workflow>, Box<Workflow>),
}

/// A member running `task_name` with `args` (a JSON array or object).
pub fn task(task_name: &str, args: Value) -> Workflow {
    Workflow::Task(WorkflowStep {
        task_name: task_name.to_string(),
        args: args.to_string().into_bytes(),
        receive: Receive::First,
        priority: None,
        timeout_ms: None,
        max_retries: None,
        retry_delay_ms: None,
    })
}

impl Workflow {
    /// Runs `members` one after another.
    pub fn chain(members: impl IntoIterator<Item = Workflow>) -> Workflow {
        Workflow::Chain(members.into_iter().collect())
    }

    /// Runs `members` at once.
    pub fn group(members: impl IntoIterator<Item = Workflow>) -> Workflow {
        Workflow::Group(members.into_iter().collect())
    }

    /// Runs `members` at once, then `then` with the list of their results.
    pub fn chord(members: impl IntoIterator<Item = Workflow>, then: Workflow) -> Workflow {
        Workflow::Chord(members.into_iter().collect(), Box::new(then))
    }

    /// For a task: how it receives the previous result (no effect otherwise).
    pub fn receive(self, receive: Receive) -> Workflow {
        self.with_step(|step| step.receive = receive)
    }

    /// For a task: its priority.
    pub fn priority(self, priority: Priority) -> Workflow {
        self.with_step(|step| step.priority = Some(priority))
    }

    /// For a task: its timeout (zero: none).
    pub fn timeout(self, timeout: Duration) -> Workflow {
        self.with_step(|step| step.timeout_ms = Some(timeout.as_millis().min(u64::MAX as u128) as u64))
    }

    /// For a task: its retries, and the pause before the first (doubling after).
    pub fn retries(self, max_retries: u32, delay: Duration) -> Workflow {
        self.with_step(|step| {
            step.max_retries = Some(max_retries);
            step.retry_delay_ms = Some(delay.as_millis().min(u64::MAX as u128) as u64);
        })
    }

    fn with_step(mut self, change: impl FnOnce(&mut WorkflowStep)) -> Workflow {
        if let Workflow::Task(step) = &mut self {
            change(step);
        }
        self
    }

    /// The submission of this workflow under `workflow_id`, flattened in
    /// depth-first pre-order; refused when deeper than [`MAX_DEPTH`].
    pub fn to_submit(&self, workflow_id: WorkflowId) -> Result<WorkflowSubmit, SpecError> {
        let mut nodes = Vec::new();
        self.flatten(&mut nodes, 1)?;
        Ok(WorkflowSubmit { workflow_id, nodes })
    }

    fn flatten(&self, nodes: &mut Vec<WorkflowNode>, depth: usize) -> Result<u32, SpecError> {
        if depth > MAX_DEPTH {
            return Err(SpecError(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let index = nodes.len() as u32;
        let children = |members: &[&Workflow], nodes: &mut Vec<WorkflowNode>| {
            members.iter().map(|member| member.flatten(nodes, depth + 1)).collect::<Result<Vec<u32>, _>>()
        };
        match self {
            Workflow::Task(step) => nodes.push(WorkflowNode::Task(step.clone())),
            Workflow::Chain(members) | Workflow::Group(members) => {
                nodes.push(WorkflowNode::Chain(Vec::new()));
                let kids = children(&members.iter().collect::<Vec<_>>(), nodes)?;
                nodes[index as usize] = if matches!(self, Workflow::Chain(_)) {
                    WorkflowNode::Chain(kids)
                } else {
                    WorkflowNode::Group(kids)
                };
            }
            Workflow::Chord(members, then) => {
                // A chord is a chain of its group and its callback.
                nodes.push(WorkflowNode::Chain(Vec::new()));
                let group = nodes.len() as u32;
                nodes.push(WorkflowNode::Group(Vec::new()));
                let kids = children(&members.iter().collect::<Vec<_>>(), nodes)?;
                nodes[group as usize] = WorkflowNode::Group(kids);
                let then = then.flatten(nodes, depth + 1)?;
                nodes[index as usize] = WorkflowNode::Chain(vec![group, then]);
            }
        }
        Ok(index)
    }

    /// Reads the JSON description (`docs/workflows.md`), saying where it
    /// is wrong. Nesting is checked before it is followed.
    pub fn from_json(bytes: &[u8]) -> Result<Workflow, SpecError> {
        // serde_json refuses input nested deeper than 128 levels.
        let value: Value = serde_json::from_slice(bytes).map_err(|error| SpecError(format!("not JSON: {error}")))?;
        Workflow::from_value(&value, "$", 1)
    }

    fn from_value(value: &Value, path: &str, depth: usize) -> Result<Workflow, SpecError> {
        if depth > MAX_DEPTH {
            return Err(SpecError(format!("{path}: nested deeper than {MAX_DEPTH} levels")));
        }
        let bad = |what: String| Err(SpecError(format!("{path}: {what}")));
        let Some(object) = value.as_object() else {
            return bad("expected an object with \"task\", \"chain\", \"group\" or \"chord\"".into());
        };
        let list = |key: &str, value: &Value| -> Result<Vec<Workflow>, SpecError> {
            let Some(items) = value.as_array() else {
                return Err(SpecError(format!("{path}.{key}: expected a list of workflows")));
            };
            items
                .iter()
                .enumerate()
                .map(|(i, item)| Workflow::from_value(item, &format!("{path}.{key}[{i}]"), depth + 1))
                .collect()
        };
        let only = |allowed: &[&str]| -> Result<(), SpecError> {
            match object.keys().find(|key| !allowed.contains(&key.as_str())) {
                Some(key) => {
                    Err(SpecError(format!("{path}: unknown field \"{key}\" (allowed here: {})", allowed.join(", "))))
                }
                None => Ok(()),
            }
        };
        if let Some(items) = object.get("chain") {
            only(&["chain"])?;
            return Ok(Workflow::Chain(list("chain", items)?));
        }
        if let Some(items) = object.get("group") {
            only(&["group"])?;
            return Ok(Workflow::Group(list("group", items)?));
        }
        if let Some(chord) = object.get("chord") {
            only(&["chord"])?;
            let Some(chord) = chord.as_object() else {
                return bad("\"chord\": expected {\"group\": [...], \"then\": {...}}".into());
            };
            if let Some(key) = chord.keys().find(|key| !["group", "then"].contains(&key.as_str())) {
                return bad(format!("chord: unknown field \"{key}\" (allowed: group, then)"));
            }
            let (Some(members), Some(then)) = (chord.get("group"), chord.get("then")) else {
                return bad("a chord needs \"group\" and \"then\"".into());
            };
            let members = list("chord.group", members)?;
            let then = Workflow::from_value(then, &format!("{path}.chord.then"), depth + 1)?;
            return Ok(Workflow::Chord(members, Box::new(then)));
        }
        if object.contains_key("task") {
            only(&["task", "args", "receive", "priority", "timeout_ms", "retries", "retry_delay_ms"])?;
            return step_from(object, path).map(Workflow::Task);
        }
        bad("expected an object with \"task\", \"chain\", \"group\" or \"chord\"".into())
    }

    /// The JSON description of this workflow (what [`Workflow::from_json`] reads).
    pub fn to_json(&self) -> Value {
        let list = |members: &[Workflow]| Value::Array(members.iter().map(Workflow::to_json).collect());
        match self {
            Workflow::Task(step) => {
                let mut object = Map::new();
                object.insert("task".into(), step.task_name.clone().into());
                let args = serde_json::from_slice(&step.args).unwrap_or(Value::Null);
                object.insert("args".into(), args);
                let receive = match &step.receive {
                    Receive::First => None,
                    Receive::Ignore => Some(Value::from("none")),
                    Receive::Key(key) => Some(serde_json::json!({ "key": key })),
                };
                let fields = [
                    ("receive", receive),
                    ("priority", step.priority.map(|p| p.as_str().into())),
                    ("timeout_ms", step.timeout_ms.map(Value::from)),
                    ("retries", step.max_retries.map(Value::from)),
                    ("retry_delay_ms", step.retry_delay_ms.map(Value::from)),
                ];
                for (key, value) in fields {
                    if let Some(value) = value {
                        object.insert(key.into(), value);
                    }
                }
                Value::Object(object)
            }
            Workflow::Chain(members) => serde_json::json!({ "chain": list(members) }),
            Workflow::Group(members) => serde_json::json!({ "group": list(members) }),
            Workflow::Chord(members, then) => {
                serde_json::json!({ "chord": { "group": list(members), "then": then.to_json() } })
            }
        }
    }
}

fn step_from(object: &Map<String, Value>, path: &str) -> Result<WorkflowStep, SpecError> {
    let bad = |what: String| SpecError(format!("{path}: {what}"));
    let task_name = object["task"].as_str().ok_or_else(|| bad("\"task\" must be a task name".into()))?;
    let args = match object.get("args") {
        None => Value::Array(Vec::new()),
        Some(args @ (Value::Array(_) | Value::Object(_))) => args.clone(),
        Some(_) => return Err(bad("\"args\" must be a list (positional) or an object (by name)".into())),
    };
    let receive = match object.get("receive") {
        None => Receive::First,
        Some(Value::String(mode)) if mode == "first" => Receive::First,
        Some(Value::String(mode)) if mode == "none" => Receive::Ignore,
        Some(Value::Object(key)) if key.len() == 1 && key.get("key").is_some_and(Value::is_string) => {
            Receive::Key(key["key"].as_str().unwrap_or_default().to_string())
        }
        Some(_) => return Err(bad("\"receive\" must be \"first\", \"none\" or {\"key\": \"name\"}".into())),
    };
    let priority = match object.get("priority") {
        None => None,
        Some(value) => Some(
            value
                .as_str()
                .and_then(Priority::parse)
                .ok_or_else(|| bad("\"priority\" must be \"critical\", \"high\", \"normal\" or \"low\"".into()))?,
        ),
    };
    let number = |key: &str| -> Result<Option<u64>, SpecError> {
        match object.get(key) {
            None => Ok(None),
            Some(value) => {
                value.as_u64().map(Some).ok_or_else(|| bad(format!("\"{key}\" must be a whole number of 0 or more")))
            }
        }
    };
    let max_retries = match number("retries")? {
        None => None,
        Some(n) => Some(u32::try_from(n).map_err(|_| bad("\"retries\" is too large".into()))?),
    };
    Ok(WorkflowStep {
        task_name: task_name.to_string(),
        args: args.to_string().into_bytes(),
        receive,
        priority,
        timeout_ms: number("timeout_ms")?,
        max_retries,
        retry_delay_ms: number("retry_delay_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_chord_flattens_to_a_chain_of_its_group_and_callback() {
        let wf = Workflow::chord([task("add", json!([1, 2])), task("add", json!([3, 4]))], task("sum", json!([])));
        let submit = wf.to_submit(WorkflowId::nil()).unwrap();
        assert_eq!(submit.nodes.len(), 5);
        assert_eq!(submit.nodes[0], WorkflowNode::Chain(vec![1, 4]));
        assert_eq!(submit.nodes[1], WorkflowNode::Group(vec![2, 3]));
        assert!(matches!(&submit.nodes[4], WorkflowNode::Task(step) if step.task_name == "sum"));
    }

    #[test]
    fn the_json_description_reads_back_what_it_writes() {
        let wf = Workflow::chain([
            task("add", json!([1, 2])).priority(Priority::High),
            Workflow::group([task("add", json!([1])), task("echo", json!({"text": "x"})).receive(Receive::Ignore)]),
            Workflow::chord(
                [task("add", json!([1, 1]))],
                task("sum", json!({})).receive(Receive::Key("values".into())),
            ),
        ]);
        let text = wf.to_json().to_string();
        assert_eq!(Workflow::from_json(text.as_bytes()).unwrap(), wf);
    }

    #[test]
    fn bad_descriptions_say_where() {
        let error = |text: &str| Workflow::from_json(text.as_bytes()).unwrap_err().0;
        assert!(error(r#"{"chain": [{"task": "add"}, {"tusk": 1}]}"#).contains("$.chain[1]"));
        assert!(error(r#"{"task": "add", "args": 5}"#).contains("\"args\""));
        assert!(error(r#"{"task": "add", "receive": "second"}"#).contains("\"receive\""));
        assert!(error(r#"{"chord": {"group": []}}"#).contains("\"then\""));
        assert!(error(r#"{"group": [], "extra": 1}"#).contains("unknown field"));
        assert!(error("[").contains("not JSON"));
        let deep = format!("{}{}{}", r#"{"chain": ["#.repeat(40), r#"{"task": "noop"}"#, "]}".repeat(40));
        assert!(error(&deep).contains("deeper than 32"));
        let mut built = task("noop", json!([]));
        for _ in 0..40 {
            built = Workflow::chain([built]);
        }
        assert!(built.to_submit(WorkflowId::nil()).is_err());
    }
}
