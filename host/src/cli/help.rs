//! The examples `--help` shows after each command's flags, and the
//! headings that group a server's flags by purpose.

/// Headings of `control-plane --help` and `subworker --help`.
pub(crate) mod heading {
    pub(crate) const ADDRESSES: &str = "Ports and addresses";
    pub(crate) const PLUGINS: &str = "Plugins";
    pub(crate) const RUNNING: &str = "Running tasks and isolation";
    pub(crate) const SUBWORKERS: &str = "Subworkers";
    pub(crate) const RESULTS: &str = "Results";
    pub(crate) const DURABILITY: &str = "Durability and shutdown";
    pub(crate) const TASK_LIMITS: &str = "Task limits";
    pub(crate) const BOUNDS: &str = "Bounds against overload and hostile peers";
    pub(crate) const CLUSTER_BOUNDS: &str = "Bounds of the cluster and the dashboard";
    pub(crate) const TRUST: &str = "Trust (keys and TLS)";
    pub(crate) const DASHBOARD: &str = "Dashboard";
}

pub(crate) const CONTROL_PLANE: &str = "\
Example:
  fastworker control-plane --task-modules example_tasks --concurrency 4
  (then open http://127.0.0.1:8080 for the dashboard)";

pub(crate) const SUBWORKER: &str = "\
Example:
  fastworker subworker --worker-id sw1 --control-plane-address tcp://127.0.0.1:5555 \\
      --base-address tcp://127.0.0.1:6000 --task-modules text_tasks";

pub(crate) const LIST: &str = "\
Example:
  fastworker list --task-modules example_tasks --json";

pub(crate) const SUBMIT: &str = "\
Examples:
  fastworker submit --task-name add --args 5 3
  fastworker submit --task-name repeat --kwargs text=ab times=3
  fastworker submit --task-name sleep_ms --args 5000 --non-blocking";

pub(crate) const STATUS: &str = "\
Example:
  fastworker status --task-id 01938a3c-0000-7000-8000-000000000000";

pub(crate) const CANCEL: &str = "\
Example:
  fastworker cancel --task-id 01938a3c-0000-7000-8000-000000000000";

pub(crate) const WORKERS: &str = "\
Example:
  fastworker workers --address tcp://127.0.0.1:5555";

pub(crate) const SCHEDULES: &str = "\
Examples:
  fastworker schedules
  fastworker schedules --pause tick";

pub(crate) const KEYGEN: &str = "\
Examples:
  fastworker keygen --out cluster.key
  fastworker keygen --out client.key --role client --from cluster.key";

pub(crate) const LIMITS: &str = "\
Examples:
  fastworker limits list
  fastworker limits set add rate=20/s burst=5 max_running=2
  fastworker limits clear add";

pub(crate) const WORKFLOW: &str = "\
Examples:
  fastworker workflow submit --file chain.json
  fastworker workflow status 01938a3c-0000-7000-8000-000000000000";
