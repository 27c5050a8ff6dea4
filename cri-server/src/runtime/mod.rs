//! RuntimeService handlers, one file per RPC.

pub mod attach;
pub mod container_create;
pub mod container_events;
pub mod container_list;
pub mod container_remove;
pub mod container_start;
pub mod container_stats;
pub mod container_status;
pub mod container_stop;
pub mod exec;
pub mod exec_sync;
pub mod list_container_stats;
pub mod pod_sandbox_stats;
pub mod port_forward;
pub mod reopen_container_log;
pub mod runtime_config;
pub mod sandbox_list;
pub mod sandbox_remove;
pub mod sandbox_run;
pub mod sandbox_status;
pub mod sandbox_stop;
pub mod status;
pub mod update_container_resources;
pub mod update_runtime_config;
pub mod version;
