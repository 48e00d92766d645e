//! One workflow's bookkeeping, as a pure state machine: no sockets, locks
//! or clocks. Events go in (the workflow starts, a member's task ended, a
//! client cancels), [`NextSteps`] come out (tasks to create with the
//! arguments built for them, tasks to cancel, the workflow's end). Counters
//! track groups as their members finish: nothing polls.
//!
//! Result passing: a node that *receives* the result before it hands it to
//! its entry: a task takes it as its [`Receive`] says, a chain gives it to
//! its first child, a group to every child. A chain's result is its last
//! child's; a group's is the JSON list of its children's, in order.

use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::wire::protocol::{FailureKind, TaskError, TaskId, TaskState};
use crate::wire::workflow::{
    MemberState, Receive, WorkflowFailure, WorkflowId, WorkflowNode, WorkflowStep, WorkflowSubmit,
};

/// What a workflow may ask for, checked when it is submitted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Members (tasks) at most.
    pub(crate) max_members: usize,
    /// Nesting depth at most (the root is at depth 1).
    pub(crate) max_depth: usize,
    /// Bytes of arguments built for a member, or of a group's results
    /// carried on, at most (they must fit a frame).
    pub(crate) max_bytes: usize,
    /// Retries a member may ask for.
    pub(crate) max_retries: u32,
    /// The longest pause before a retry, in milliseconds.
    pub(crate) max_delay_ms: u64,
}

/// How a member's task ended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) enum Outcome {
    Succeeded(#[serde(with = "serde_bytes")] Vec<u8>),
    Failed(TaskError),
    TimedOut(TaskError),
    Cancelled(TaskError),
}

/// A member's task to create now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Submission {
    pub(crate) node: u32,
    pub(crate) task_id: TaskId,
    /// The member, with the arguments built for it.
    pub(crate) step: WorkflowStep,
}

/// What the control plane must do after an event.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct NextSteps {
    /// Tasks to create, in order.
    pub(crate) submit: Vec<Submission>,
    /// Live member tasks to cancel.
    pub(crate) cancel: Vec<TaskId>,
    /// The workflow has just ended.
    pub(crate) ended: bool,
}

/// Where a task node is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Member {
    Pending,
    Live(TaskId),
    Done(MemberState, Option<TaskId>),
}

struct Node {
    kind: WorkflowNode,
    /// Its parent and its position among the parent's children.
    parent: Option<(u32, u32)>,
    member: Member,
    /// A finished child's result, until its group ends.
    result: Option<Vec<u8>>,
    /// A group's children not finished yet.
    remaining: u32,
    /// Bytes of results a group holds.
    held: usize,
}

/// One workflow's state.
pub(crate) struct Machine {
    id: WorkflowId,
    nodes: Vec<Node>,
    state: crate::wire::workflow::WorkflowState,
    result: Option<Vec<u8>>,
    failure: Option<WorkflowFailure>,
    max_bytes: usize,
    /// Bytes of results its groups hold, all together.
    held: usize,
}

/// The task id of member `node` of workflow `id`: derived, so that a
/// restarted control plane finds the same tasks again.
pub(crate) fn member_task_id(id: WorkflowId, node: u32) -> TaskId {
    let mut hash = Sha256::new();
    hash.update(b"fastworker workflow member\0");
    hash.update(id.as_bytes());
    hash.update(node.to_le_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Checks a submission against `bounds`: a tree (each node but the root
/// the child of exactly one node of a smaller index), no empty chain or
/// group, arguments that can take what they receive. Iterative: a hostile
/// tree costs one pass over its nodes.
pub(crate) fn validate(submit: &WorkflowSubmit, bounds: &Bounds) -> Result<Vec<Option<(u32, u32)>>, String> {
    let nodes = &submit.nodes;
    let members = nodes.iter().filter(|n| matches!(n, WorkflowNode::Task(_))).count();
    if nodes.is_empty() {
        return Err("a workflow needs at least one task".into());
    }
    if members > bounds.max_members || nodes.len() > bounds.max_members.saturating_mul(2) {
        return Err(format!(
            "{members} members in {} nodes; a workflow may have at most {} members here",
            nodes.len(),
            bounds.max_members
        ));
    }
    let mut parents: Vec<Option<(u32, u32)>> = vec![None; nodes.len()];
    let mut depth = vec![1usize; nodes.len()];
    // Whether a node receives a result from before it.
    let mut receives = vec![false; nodes.len()];
    for (index, node) in nodes.iter().enumerate() {
        if index > 0 && parents[index].is_none() {
            return Err(format!("node {index} is nobody's child (children must come after their parent)"));
        }
        if depth[index] > bounds.max_depth {
            return Err(format!("nested deeper than {} levels (node {index})", bounds.max_depth));
        }
        let (children, chain) = match node {
            WorkflowNode::Task(step) => {
                check_step(index, step, receives[index], bounds)?;
                continue;
            }
            WorkflowNode::Chain(children) => (children, true),
            WorkflowNode::Group(children) => (children, false),
        };
        if children.is_empty() {
            return Err(format!("node {index} is an empty {}", if chain { "chain" } else { "group" }));
        }
        for (position, &child) in children.iter().enumerate() {
            let child_index = child as usize;
            if child_index <= index || child_index >= nodes.len() || parents[child_index].is_some() {
                return Err(format!(
                    "node {index} names child {child}, which is not a later node with no other parent"
                ));
            }
            parents[child_index] = Some((index as u32, position as u32));
            depth[child_index] = depth[index] + 1;
            receives[child_index] = receives[index] || (chain && position > 0);
        }
    }
    Ok(parents)
}

fn check_step(index: usize, step: &WorkflowStep, receives: bool, bounds: &Bounds) -> Result<(), String> {
    let name = &step.task_name;
    if name.is_empty() || name.len() > 256 {
        return Err(format!("member {index}: a task name of 1 to 256 bytes is needed"));
    }
    let by_name = match step.args.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => false,
        Some(b'{') => true,
        _ => return Err(format!("member {index} ('{name}'): its arguments must be a JSON list or object")),
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&step.args).is_err() {
        return Err(format!("member {index} ('{name}'): its arguments are not JSON"));
    }
    match &step.receive {
        Receive::First if receives && by_name => {
            return Err(format!(
                "member {index} ('{name}') takes its arguments by name, so it cannot receive the previous result as its first argument: give it \"receive\": {{\"key\": \"<parameter>\"}} or \"none\""
            ))
        }
        Receive::Key(key) if !by_name || key.is_empty() => {
            return Err(format!(
                "member {index} ('{name}') receives the previous result as argument '{key}': its arguments must be a JSON object and the key not empty"
            ))
        }
        _ => {}
    }
    if step.max_retries.is_some_and(|r| r > bounds.max_retries) {
        return Err(format!(
            "member {index} ('{name}'): at most {} retries are allowed here (--max-retries)",
            bounds.max_retries
        ));
    }
    if step.retry_delay_ms.is_some_and(|d| d > bounds.max_delay_ms) {
        return Err(format!(
            "member {index} ('{name}'): the pause before a retry is longer than --max-countdown allows"
        ));
    }
    Ok(())
}

/// `args` given `input` as `receive` says; `None` when they cannot take it.
fn build_args(args: &[u8], receive: &Receive, input: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let Some(input) = input else { return Ok(args.to_vec()) };
    match receive {
        Receive::Ignore => Ok(args.to_vec()),
        Receive::First => {
            let items: Vec<&RawValue> =
                serde_json::from_slice(args).map_err(|e| format!("its arguments are not a JSON list: {e}"))?;
            let mut out = Vec::with_capacity(args.len() + input.len() + 2);
            out.push(b'[');
            out.extend_from_slice(input);
            for item in items {
                out.push(b',');
                out.extend_from_slice(item.get().as_bytes());
            }
            out.push(b']');
            Ok(out)
        }
        Receive::Key(key) => {
            let mut object: std::collections::BTreeMap<String, Box<RawValue>> =
                serde_json::from_slice(args).map_err(|e| format!("its arguments are not a JSON object: {e}"))?;
            let value = RawValue::from_string(String::from_utf8_lossy(input).into_owned())
                .map_err(|e| format!("the result it receives is not JSON: {e}"))?;
            object.insert(key.clone(), value);
            serde_json::to_vec(&object).map_err(|e| e.to_string())
        }
    }
}

impl Machine {
    /// A workflow for a submission that [`validate`] accepted.
    pub(crate) fn new(submit: WorkflowSubmit, parents: Vec<Option<(u32, u32)>>, max_bytes: usize) -> Machine {
        let nodes = submit
            .nodes
            .into_iter()
            .zip(parents)
            .map(|(kind, parent)| Node { kind, parent, member: Member::Pending, result: None, remaining: 0, held: 0 })
            .collect();
        Machine {
            id: submit.workflow_id,
            nodes,
            state: crate::wire::workflow::WorkflowState::Running,
            result: None,
            failure: None,
            max_bytes,
            held: 0,
        }
    }

    /// Bytes of results its groups hold until they end: what a running
    /// chord gathers.
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// About the bytes it holds in all: its nodes (with their arguments),
    /// the results held, its own result and failure. What a finished
    /// workflow kept for its status is counted for.
    pub(crate) fn bytes(&self) -> usize {
        let nodes: usize = self
            .nodes
            .iter()
            .map(|node| {
                let step = match &node.kind {
                    WorkflowNode::Task(step) => {
                        let key = if let Receive::Key(key) = &step.receive { key.len() } else { 0 };
                        step.task_name.len() + step.args.len() + key
                    }
                    WorkflowNode::Chain(children) | WorkflowNode::Group(children) => children.len() * 4,
                };
                std::mem::size_of::<Node>() + step
            })
            .sum();
        let failure =
            self.failure.as_ref().map_or(0, |f| f.message.len() + f.task_name.as_ref().map_or(0, String::len));
        std::mem::size_of::<Machine>() + nodes + self.held + self.result.as_ref().map_or(0, Vec::len) + failure
    }

    /// Fails the running workflow for a reason outside it (a bound of the
    /// control plane): live members are cancelled, pending ones skipped.
    pub(crate) fn abort(&mut self, message: String) -> NextSteps {
        let mut effects = NextSteps::default();
        if !self.state.is_final() {
            self.fail(None, message, &mut effects);
        }
        effects
    }

    /// Starts the workflow: the first members to run.
    pub(crate) fn start(&mut self) -> NextSteps {
        let mut effects = NextSteps::default();
        self.activate(0, None, &mut effects);
        effects
    }

    /// The workflow's state.
    pub(crate) fn state(&self) -> crate::wire::workflow::WorkflowState {
        self.state
    }

    /// The root's result, once succeeded.
    pub(crate) fn result(&self) -> Option<&[u8]> {
        self.result.as_deref()
    }

    /// The first failure, once failed or cancelled.
    pub(crate) fn failure(&self) -> Option<&WorkflowFailure> {
        self.failure.as_ref()
    }

    /// Members whose tasks exist and have not ended.
    pub(crate) fn live_members(&self) -> impl Iterator<Item = (u32, TaskId)> + '_ {
        self.nodes.iter().enumerate().filter_map(|(i, n)| match n.member {
            Member::Live(task_id) => Some((i as u32, task_id)),
            _ => None,
        })
    }

    /// Each member: its node, task name, task id once created, and state
    /// (`live` tells where a created task is).
    pub(crate) fn members(
        &self,
        live: impl Fn(TaskId) -> Option<TaskState>,
    ) -> Vec<(u32, &str, Option<TaskId>, MemberState)> {
        let mut members = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let WorkflowNode::Task(step) = &node.kind else { continue };
            let (task_id, state) = match node.member {
                Member::Pending => (None, MemberState::Pending),
                Member::Done(state, task_id) => (task_id, state),
                Member::Live(task_id) => {
                    let state = match live(task_id) {
                        Some(TaskState::Running) => MemberState::Running,
                        Some(TaskState::Retrying) => MemberState::Retrying,
                        _ => MemberState::Queued,
                    };
                    (Some(task_id), state)
                }
            };
            members.push((index as u32, step.task_name.as_str(), task_id, state));
        }
        members
    }

    /// Member `node`'s task ended. Outcomes for members not live (twice, or
    /// unknown) change nothing.
    pub(crate) fn member_ended(&mut self, node: u32, outcome: Outcome) -> NextSteps {
        let mut effects = NextSteps::default();
        let Some(Node { member: Member::Live(task_id), kind: WorkflowNode::Task(step), .. }) =
            self.nodes.get(node as usize)
        else {
            return effects;
        };
        let (task_id, task_name) = (*task_id, step.task_name.clone());
        let (state, error) = match outcome {
            Outcome::Succeeded(result) => {
                self.nodes[node as usize].member = Member::Done(MemberState::Succeeded, Some(task_id));
                if !self.state.is_final() {
                    self.completed(node, result, &mut effects);
                }
                return effects;
            }
            Outcome::Failed(error) => (MemberState::Failed, error),
            Outcome::TimedOut(error) => (MemberState::TimedOut, error),
            Outcome::Cancelled(error) => (MemberState::Cancelled, error),
        };
        self.nodes[node as usize].member = Member::Done(state, Some(task_id));
        if self.state.is_final() {
            return effects;
        }
        let failure = WorkflowFailure {
            node: Some(node),
            task_id: Some(task_id),
            task_name: Some(task_name),
            state,
            kind: error.kind,
            message: error.message,
        };
        let ending = if state == MemberState::Cancelled {
            crate::wire::workflow::WorkflowState::Cancelled
        } else {
            crate::wire::workflow::WorkflowState::Failed
        };
        self.end(ending, failure, &mut effects);
        effects
    }

    /// A member's task could not be created (refused): the workflow fails.
    pub(crate) fn member_refused(&mut self, node: u32, message: String) -> NextSteps {
        let mut effects = NextSteps::default();
        if let Some(node_state) = self.nodes.get_mut(node as usize) {
            if let Member::Live(task_id) = node_state.member {
                node_state.member = Member::Done(MemberState::Failed, Some(task_id));
            }
        }
        if !self.state.is_final() {
            self.fail(Some(node), message, &mut effects);
        }
        effects
    }

    /// A member handed out for creation was not created, the workflow
    /// having ended first: it is skipped.
    pub(crate) fn member_not_created(&mut self, node: u32) {
        if let Some(node) = self.nodes.get_mut(node as usize) {
            if matches!(node.member, Member::Live(_)) {
                node.member = Member::Done(MemberState::Skipped, None);
            }
        }
    }

    /// A client cancels the workflow: pending members never run, live ones
    /// are cancelled.
    pub(crate) fn cancel(&mut self, message: String) -> NextSteps {
        let mut effects = NextSteps::default();
        if !self.state.is_final() {
            let failure = WorkflowFailure {
                node: None,
                task_id: None,
                task_name: None,
                state: MemberState::Cancelled,
                kind: FailureKind::Error,
                message,
            };
            self.end(crate::wire::workflow::WorkflowState::Cancelled, failure, &mut effects);
        }
        effects
    }

    /// Gives node `index` its input and creates the tasks that can start.
    fn activate(&mut self, index: u32, input: Option<&[u8]>, effects: &mut NextSteps) {
        match &self.nodes[index as usize].kind {
            WorkflowNode::Task(step) => {
                let built = build_args(&step.args, &step.receive, input).and_then(|args| {
                    if args.len() > self.max_bytes {
                        Err(format!(
                            "the arguments built for it are {} bytes, more than the {} a frame may carry (--max-frame-bytes)",
                            args.len(),
                            self.max_bytes
                        ))
                    } else {
                        Ok(args)
                    }
                });
                match built {
                    Ok(args) => {
                        let task_id = member_task_id(self.id, index);
                        let step = WorkflowStep { args, ..step.clone() };
                        self.nodes[index as usize].member = Member::Live(task_id);
                        effects.submit.push(Submission { node: index, task_id, step });
                    }
                    Err(why) => {
                        let message = format!("member {index} ('{}') cannot start: {why}", step.task_name);
                        self.fail(Some(index), message, effects);
                    }
                }
            }
            WorkflowNode::Chain(children) => {
                let first = children[0];
                self.activate(first, input, effects);
            }
            WorkflowNode::Group(children) => {
                let children = children.clone();
                self.nodes[index as usize].remaining = children.len() as u32;
                for child in children {
                    if self.state.is_final() {
                        break;
                    }
                    self.activate(child, input, effects);
                }
            }
        }
    }

    /// Node `index` finished with `result`: its parent goes on.
    fn completed(&mut self, mut index: u32, mut result: Vec<u8>, effects: &mut NextSteps) {
        loop {
            let Some((parent, position)) = self.nodes[index as usize].parent else {
                self.state = crate::wire::workflow::WorkflowState::Succeeded;
                self.result = Some(result);
                effects.ended = true;
                return;
            };
            match &self.nodes[parent as usize].kind {
                WorkflowNode::Chain(children) => match children.get(position as usize + 1) {
                    Some(&next) => return self.activate(next, Some(&result), effects),
                    None => index = parent,
                },
                WorkflowNode::Group(children) => {
                    let children = children.clone();
                    let group = &mut self.nodes[parent as usize];
                    group.held = group.held.saturating_add(result.len() + 1);
                    self.held = self.held.saturating_add(result.len() + 1);
                    group.remaining = group.remaining.saturating_sub(1);
                    let (held, remaining) = (group.held, group.remaining);
                    if held > self.max_bytes {
                        let message = format!(
                            "the results of group {parent} reach {held} bytes, more than the {} a frame may carry (--max-frame-bytes)",
                            self.max_bytes
                        );
                        return self.fail(Some(parent), message, effects);
                    }
                    if remaining > 0 {
                        self.nodes[index as usize].result = Some(result);
                        return;
                    }
                    let mut list = Vec::with_capacity(held + 2);
                    list.push(b'[');
                    for (i, child) in children.iter().enumerate() {
                        if i > 0 {
                            list.push(b',');
                        }
                        let part = if *child == index {
                            Some(std::mem::take(&mut result))
                        } else {
                            self.nodes[*child as usize].result.take()
                        };
                        list.extend_from_slice(&part.unwrap_or_else(|| b"null".to_vec()));
                    }
                    list.push(b']');
                    let group = &mut self.nodes[parent as usize];
                    self.held = self.held.saturating_sub(group.held);
                    group.held = 0;
                    (index, result) = (parent, list);
                }
                WorkflowNode::Task(_) => unreachable!("a task has no children"),
            }
        }
    }

    fn fail(&mut self, node: Option<u32>, message: String, effects: &mut NextSteps) {
        let task_name = node.and_then(|n| match &self.nodes[n as usize].kind {
            WorkflowNode::Task(step) => Some(step.task_name.clone()),
            _ => None,
        });
        let failure = WorkflowFailure {
            node,
            task_id: None,
            task_name,
            state: MemberState::Failed,
            kind: FailureKind::Error,
            message,
        };
        self.end(crate::wire::workflow::WorkflowState::Failed, failure, effects);
    }

    /// Ends the workflow: pending members are skipped, live ones cancelled.
    fn end(&mut self, state: crate::wire::workflow::WorkflowState, failure: WorkflowFailure, effects: &mut NextSteps) {
        self.state = state;
        self.failure = Some(failure);
        effects.ended = true;
        self.held = 0;
        for node in &mut self.nodes {
            node.result = None;
            node.held = 0;
            match node.member {
                Member::Pending if matches!(node.kind, WorkflowNode::Task(_)) => {
                    node.member = Member::Done(MemberState::Skipped, None)
                }
                Member::Live(task_id) => effects.cancel.push(task_id),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::spec::{task, Workflow};
    use super::*;
    use crate::wire::workflow::WorkflowState;

    const BOUNDS: Bounds =
        Bounds { max_members: 100, max_depth: 32, max_bytes: 1 << 20, max_retries: 10, max_delay_ms: 1000 };

    fn machine(wf: Workflow) -> Machine {
        machine_with(wf, BOUNDS)
    }

    fn machine_with(wf: Workflow, bounds: Bounds) -> Machine {
        let submit = wf.to_submit(WorkflowId::from_bytes([1; 16])).unwrap();
        let parents = validate(&submit, &bounds).unwrap();
        Machine::new(submit, parents, bounds.max_bytes)
    }

    fn args(effects: &NextSteps) -> Vec<(u32, String)> {
        effects.submit.iter().map(|s| (s.node, String::from_utf8(s.step.args.clone()).unwrap())).collect()
    }

    fn ok(value: serde_json::Value) -> Outcome {
        Outcome::Succeeded(value.to_string().into_bytes())
    }

    fn error(message: &str) -> TaskError {
        TaskError { kind: FailureKind::Error, message: message.into() }
    }

    #[test]
    fn the_results_a_chord_gathers_are_counted_until_its_group_ends() {
        let mut m =
            machine(Workflow::chord([task("add", json!([1, 2])), task("add", json!([3, 4]))], task("sum", json!([]))));
        let effects = m.start();
        let (a, b) = (effects.submit[0].node, effects.submit[1].node);
        assert_eq!(m.held(), 0);
        m.member_ended(a, ok(json!(3)));
        assert_eq!(m.held(), 2, "its result and a separator");
        let callback = m.member_ended(b, ok(json!(7)));
        assert_eq!((m.held(), args(&callback)), (0, vec![(4, "[[3,7]]".to_string())]), "handed on");
        let mut aborted =
            machine(Workflow::chord([task("add", json!([1])), task("add", json!([2]))], task("sum", json!([]))));
        let effects = aborted.start();
        aborted.member_ended(effects.submit[0].node, ok(json!(1)));
        let stop = aborted.abort("too much".into());
        assert_eq!((aborted.held(), aborted.state()), (0, WorkflowState::Failed));
        assert_eq!(stop.cancel, [effects.submit[1].task_id]);
        assert_eq!(aborted.failure().map(|f| f.message.as_str()), Some("too much"));
    }

    #[test]
    fn a_chain_passes_each_result_on_as_the_first_argument() {
        let mut m =
            machine(Workflow::chain([task("add", json!([1, 2])), task("add", json!([10])), task("add", json!([100]))]));
        let first = m.start();
        assert_eq!(args(&first), [(1, "[1,2]".into())]);
        let second = m.member_ended(1, ok(json!(3)));
        assert_eq!(args(&second), [(2, "[3,10]".into())]);
        let third = m.member_ended(2, ok(json!(13)));
        assert_eq!(args(&third), [(3, "[13,100]".into())]);
        let last = m.member_ended(3, ok(json!(113)));
        assert!(last.ended && last.submit.is_empty());
        assert_eq!(m.state(), WorkflowState::Succeeded);
        assert_eq!(m.result(), Some(&b"113"[..]));
    }

    #[test]
    fn a_group_collects_results_in_order_whatever_order_they_end_in() {
        let mut m = machine(Workflow::group((0..3).map(|i| task("add", json!([i, 1])))));
        let started = m.start();
        assert_eq!(started.submit.len(), 3);
        assert!(!m.member_ended(3, ok(json!(3))).ended);
        assert!(!m.member_ended(1, ok(json!(1))).ended);
        assert!(m.member_ended(2, ok(json!(2))).ended);
        assert_eq!(m.result(), Some(&b"[1,2,3]"[..]));
    }

    #[test]
    fn a_chord_callback_gets_the_list_and_object_args_take_it_by_key() {
        let mut m = machine(Workflow::chord(
            [task("add", json!([1, 1])), task("add", json!([2, 2]))],
            task("sum", json!({"scale": 1})).receive(Receive::Key("values".into())),
        ));
        m.start();
        m.member_ended(3, ok(json!(4)));
        let then = m.member_ended(2, ok(json!(2)));
        assert_eq!(args(&then), [(4, r#"{"scale":1,"values":[2,4]}"#.into())]);
        m.member_ended(4, ok(json!(6)));
        assert_eq!(m.result(), Some(&b"6"[..]));
    }

    #[test]
    fn a_group_in_a_chain_fans_the_input_out_and_ignore_drops_it() {
        let mut m = machine(Workflow::chain([
            task("add", json!([1, 2])),
            Workflow::group([task("add", json!([1])), task("noop", json!([])).receive(Receive::Ignore)]),
        ]));
        m.start();
        let fanned = m.member_ended(1, ok(json!(3)));
        assert_eq!(args(&fanned), [(3, "[3,1]".into()), (4, "[]".into())]);
        m.member_ended(4, ok(json!(null)));
        m.member_ended(3, ok(json!(4)));
        assert_eq!(m.result(), Some(&b"[4,null]"[..]));
    }

    #[test]
    fn a_failure_ends_the_workflow_cancels_the_live_and_skips_the_pending() {
        let mut m = machine(Workflow::chain([
            Workflow::group([task("divide", json!([1, 0])), task("sleep_ms", json!([1000]))]),
            task("sum", json!([])),
        ]));
        let started = m.start();
        let sleeper = started.submit[1].task_id;
        let failed = m.member_ended(2, Outcome::Failed(error("division by zero")));
        assert!(failed.ended);
        assert_eq!(failed.cancel, [sleeper]);
        assert_eq!(m.state(), WorkflowState::Failed);
        let failure = m.failure().unwrap();
        assert_eq!(
            (failure.node, failure.state, failure.message.as_str()),
            (Some(2), MemberState::Failed, "division by zero")
        );
        let states: Vec<MemberState> = m.members(|_| Some(TaskState::Running)).iter().map(|m| m.3).collect();
        assert_eq!(states, [MemberState::Failed, MemberState::Running, MemberState::Skipped]);
        // The cancelled sibling's end changes nothing but its own state.
        let after = m.member_ended(3, Outcome::Cancelled(error("cancelled")));
        assert_eq!(after, NextSteps::default());
        assert_eq!(m.members(|_| None)[1].3, MemberState::Cancelled);
        assert_eq!(m.state(), WorkflowState::Failed);
    }

    #[test]
    fn a_timeout_is_a_failure_and_a_cancelled_member_cancels_the_workflow() {
        let mut timed = machine(Workflow::chain([task("sleep_ms", json!([10])), task("add", json!([1]))]));
        timed.start();
        assert!(timed.member_ended(1, Outcome::TimedOut(error("ran past its timeout"))).ended);
        assert_eq!((timed.state(), timed.failure().unwrap().state), (WorkflowState::Failed, MemberState::TimedOut));
        let mut cancelled = machine(Workflow::chain([task("sleep_ms", json!([10])), task("add", json!([1]))]));
        cancelled.start();
        cancelled.member_ended(1, Outcome::Cancelled(error("cancelled by a client")));
        assert_eq!(cancelled.state(), WorkflowState::Cancelled);
    }

    #[test]
    fn cancelling_cancels_live_members_once_and_later_outcomes_are_ignored() {
        let mut m = machine(Workflow::chain([task("sleep_ms", json!([10])), task("add", json!([1]))]));
        let live = m.start().submit[0].task_id;
        let cancelled = m.cancel("cancelled by a client".into());
        assert_eq!((cancelled.cancel, cancelled.ended), (vec![live], true));
        assert_eq!(m.state(), WorkflowState::Cancelled);
        assert_eq!(m.cancel("again".into()), NextSteps::default());
        // The running member finished anyway: the next one still never runs.
        assert_eq!(m.member_ended(1, ok(json!(10))), NextSteps::default());
        assert_eq!(m.members(|_| None)[1].3, MemberState::Skipped);
    }

    #[test]
    fn duplicate_or_unknown_outcomes_change_nothing() {
        let mut m = machine(Workflow::group([task("add", json!([1, 2])), task("add", json!([1, 2]))]));
        m.start();
        m.member_ended(1, ok(json!(3)));
        assert_eq!(m.member_ended(1, ok(json!(3))), NextSteps::default());
        assert_eq!(m.member_ended(0, ok(json!(3))), NextSteps::default());
        assert_eq!(m.member_ended(99, ok(json!(3))), NextSteps::default());
        assert!(m.member_ended(2, ok(json!(3))).ended);
        assert_eq!(m.result(), Some(&b"[3,3]"[..]));
    }

    #[test]
    fn results_too_large_for_a_frame_fail_the_workflow_clearly() {
        let bounds = Bounds { max_bytes: 20, ..BOUNDS };
        let mut m = machine_with(
            Workflow::chord([task("echo", json!(["a"])), task("echo", json!(["b"]))], task("sum", json!([]))),
            bounds,
        );
        m.start();
        let ended = m.member_ended(2, ok(json!("x".repeat(30))));
        assert!(ended.ended);
        assert!(m.failure().unwrap().message.contains("--max-frame-bytes"), "{:?}", m.failure());
        let mut chain = machine_with(Workflow::chain([task("echo", json!(["a"])), task("echo", json!([]))]), bounds);
        chain.start();
        assert!(chain.member_ended(1, ok(json!("y".repeat(30)))).ended);
        assert_eq!(chain.members(|_| None)[1].3, MemberState::Skipped);
    }

    #[test]
    fn a_refused_member_fails_the_workflow() {
        let mut m = machine(Workflow::group([task("nope", json!([])), task("add", json!([1, 2]))]));
        let started = m.start();
        let refused = m.member_refused(1, "no worker provides task 'nope'".into());
        assert!(refused.ended);
        assert_eq!(refused.cancel, [started.submit[1].task_id]);
        assert_eq!(m.members(|_| None)[0].3, MemberState::Failed);
    }

    #[test]
    fn a_member_not_created_after_the_end_is_skipped() {
        let mut m = machine(Workflow::group([task("add", json!([1, 2])), task("add", json!([3, 4]))]));
        let started = m.start();
        let failed = m.member_ended(1, Outcome::Failed(error("gone")));
        assert_eq!(failed.cancel, [started.submit[1].task_id]);
        m.member_not_created(2);
        assert_eq!(m.members(|_| None)[1], (2, "add", None, MemberState::Skipped));
        assert!(m.live_members().next().is_none());
    }

    #[test]
    fn member_ids_are_derived_and_distinct() {
        let id = WorkflowId::from_bytes([1; 16]);
        assert_eq!(member_task_id(id, 3), member_task_id(id, 3));
        assert_ne!(member_task_id(id, 3), member_task_id(id, 4));
        assert_ne!(member_task_id(id, 3), member_task_id(WorkflowId::from_bytes([2; 16]), 3));
    }

    #[test]
    fn hostile_trees_are_refused() {
        let step = match task("add", json!([1])) {
            Workflow::Task(step) => step,
            _ => unreachable!(),
        };
        let check =
            |nodes: Vec<WorkflowNode>| validate(&WorkflowSubmit { workflow_id: WorkflowId::nil(), nodes }, &BOUNDS);
        let leaf = || WorkflowNode::Task(step.clone());
        assert!(check(vec![]).is_err());
        assert!(check(vec![WorkflowNode::Chain(vec![0])]).is_err(), "a node its own child");
        assert!(check(vec![WorkflowNode::Group(vec![1, 1]), leaf()]).is_err(), "two parents");
        assert!(check(vec![WorkflowNode::Chain(vec![5]), leaf()]).is_err(), "out of range");
        assert!(check(vec![WorkflowNode::Chain(vec![1]), leaf(), leaf()]).is_err(), "an orphan");
        assert!(check(vec![WorkflowNode::Group(vec![])]).is_err(), "empty");
        let mut deep: Vec<WorkflowNode> = (1..40).map(|i| WorkflowNode::Chain(vec![i])).collect();
        deep.push(leaf());
        assert!(check(deep).unwrap_err().contains("deeper"));
        let wide: Vec<WorkflowNode> =
            std::iter::once(WorkflowNode::Group((1..=101).collect())).chain((0..101).map(|_| leaf())).collect();
        assert!(check(wide).unwrap_err().contains("at most 100 members"));
        let by_name = WorkflowStep { args: br#"{"x":1}"#.to_vec(), ..step.clone() };
        let refused = check(vec![WorkflowNode::Chain(vec![1, 2]), leaf(), WorkflowNode::Task(by_name.clone())]);
        assert!(refused.unwrap_err().contains("by name"));
        assert!(check(vec![WorkflowNode::Task(by_name)]).is_ok(), "the first member receives nothing");
        let not_json = WorkflowStep { args: b"[1,".to_vec(), ..step.clone() };
        assert!(check(vec![WorkflowNode::Task(not_json)]).is_err());
        let greedy = WorkflowStep { max_retries: Some(11), ..step };
        assert!(check(vec![WorkflowNode::Task(greedy)]).unwrap_err().contains("--max-retries"));
    }
}
