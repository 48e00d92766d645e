//! A subworker started from the library (`fastworker::Subworker`), as a
//! program or a worker process would, joins a real control plane process,
//! runs its tasks, and on stop leaves, drains what it holds and unregisters.

use std::sync::Arc;
use std::time::Duration;

use fastworker::protocol::WorkerState;
use fastworker::{BaseAddress, Bounds, Registry, SubmitOptions, Subworker, SubworkerConfig, TaskState};
use fastworker_tests::{free_ports, plugin, runtime, wait_until, Process};

#[test]
fn a_library_subworker_serves_its_control_plane_and_drains_on_stop() {
    // The control plane has no plugin: every task runs on the subworker.
    let cp = Process::control_plane(&[], &[]);
    let registry = Registry::load(&[plugin("example-tasks")]).expect("loading the example plugin");
    let base = format!("tcp://127.0.0.1:{}", free_ports(4));
    let config = SubworkerConfig {
        worker_id: "in-process".into(),
        base: BaseAddress::parse(&base).unwrap(),
        control_plane: cp.address.clone(),
        advertise: base.clone(),
        concurrency: 2,
        prefetch: 0,
        heartbeat_interval: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(10),
        bounds: Bounds::default(),
        keys: None,
        worker_processes: None,
    };
    let subworker = Subworker::start(config, registry).expect("starting the subworker");
    let rt = Arc::new(runtime());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(subworker.run(async {
        let _ = stopped.await;
    }));
    assert!(
        wait_until(Duration::from_secs(20), || cp
            .worker("in-process")
            .is_some_and(|w| w.status == WorkerState::Active)),
        "the library subworker never became active:\n{}",
        cp.log()
    );

    let client = cp.client();
    let sum = rt.block_on(client.call::<i64>("add", (20, 22))).expect("add through the library subworker");
    assert_eq!(sum, 42);

    // A run in progress when the stop comes still ends, and the subworker unregisters.
    let slow = rt.block_on(client.delay("sleep_ms", (600,), SubmitOptions::default())).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        rt.block_on(client.status(slow)).is_ok_and(|report| report.state == TaskState::Running)
    }));
    stop.send(()).unwrap();
    rt.block_on(serving).expect("the run task").expect("the subworker stopped cleanly");
    let report = rt.block_on(client.wait(slow, Duration::from_secs(10))).unwrap();
    assert_eq!(report.state, TaskState::Succeeded, "{report:?}");
    assert!(
        wait_until(Duration::from_secs(10), || cp.worker("in-process").is_none()),
        "still listed after its stop: {:?}",
        cp.worker("in-process")
    );
}
