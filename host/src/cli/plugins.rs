//! Reading plugins without serving them: `fastworker list`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use fastworker::plugins::Registry;
use fastworker::schedules::format_ms;
use serde_json::{json, Value};

use crate::{fail, EXIT_USAGE};

#[derive(Args)]
pub(crate) struct ListArgs {
    /// Plugin libraries to list.
    #[arg(long, env = "FASTWORKER_TASK_MODULES", num_args = 1.., value_delimiter = ',', required = true)]
    pub(crate) task_modules: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// List only the periodic tasks, with their next run times.
    #[arg(long)]
    pub(crate) periodic: bool,
}

pub(crate) fn list(args: ListArgs) -> ExitCode {
    let registry = match Registry::load(&args.task_modules) {
        Ok(registry) => registry,
        Err(error) => return fail(EXIT_USAGE, error),
    };
    if args.periodic {
        return list_periodic(&registry, args.json);
    }
    let tasks = registry.tasks();
    if args.json {
        let rows: Vec<Value> = tasks
            .iter()
            .map(|task| {
                let options = &task.decl.options;
                json!({
                    "task": task.decl.name.as_str(),
                    "signature": task.decl.signature.as_str(),
                    "doc": task.decl.doc.as_str(),
                    "plugin": task.plugin.name,
                    "plugin_version": task.plugin.version,
                    "path": task.plugin.path,
                    "priority": options.priority.as_str(),
                    "timeout_ms": options.timeout_ms,
                    "max_retries": options.max_retries,
                    "retry_delay_ms": options.retry_delay_ms,
                    "schedule": options.schedule.as_str(),
                    "schema": task.schema.as_ref().map(|s| json!({ "args": s.args, "result": s.result })),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
        return ExitCode::SUCCESS;
    }
    println!("{:<16} {:<22} {:<9} {:<8} {:<7} SIGNATURE", "TASK", "PLUGIN", "PRIORITY", "TIMEOUT", "RETRIES");
    for task in tasks {
        let options = &task.decl.options;
        let timeout = if options.timeout_ms == 0 {
            "none".to_string()
        } else {
            format!("{}s", options.timeout_ms as f64 / 1000.0)
        };
        println!(
            "{:<16} {:<22} {:<9} {:<8} {:<7} {}",
            task.decl.name.as_str(),
            format!("{} {}", task.plugin.name, task.plugin.version),
            options.priority.as_str(),
            timeout,
            options.max_retries,
            task.decl.signature.as_str(),
        );
    }
    for plugin in registry.plugins() {
        println!("# {} {} from {}", plugin.name, plugin.version, plugin.path.display());
    }
    ExitCode::SUCCESS
}

/// The periodic tasks of `registry` with their next three runs from now.
pub(crate) fn list_periodic(registry: &Registry, json: bool) -> ExitCode {
    let now = fastworker::protocol::now_ms();
    let rows: Vec<(String, String, Vec<String>)> = registry
        .schedules()
        .iter()
        .map(|schedule| {
            let next = std::iter::successors(schedule.next_after(now), |at| schedule.next_after(*at))
                .take(3)
                .map(format_ms)
                .collect();
            (schedule.task_name.clone(), schedule.description.clone(), next)
        })
        .collect();
    if json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|(task, schedule, next)| json!({"task": task, "schedule": schedule, "next": next}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
    } else {
        println!("{:<16} {:<40} NEXT RUNS", "TASK", "SCHEDULE");
        for (task, schedule, next) in rows {
            println!("{task:<16} {schedule:<40} {}", next.join(", "));
        }
    }
    ExitCode::SUCCESS
}
