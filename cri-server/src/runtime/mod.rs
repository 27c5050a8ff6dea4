//! RuntimeService handlers, one file per RPC.

pub mod runtime_config;
pub mod sandbox_list;
pub mod sandbox_remove;
pub mod sandbox_run;
pub mod sandbox_status;
pub mod sandbox_stop;
pub mod status;
pub mod version;
