//! CNI: finding the network configuration and its plugins, and invoking them.

mod config;
mod invoke;
mod result;

pub use config::{NetworkConfigList, NetworkReadiness, find_network, find_plugin};
pub use invoke::{Attachment, CniError, CniInvoker, PortMapping};
pub use result::{Interface, IpConfig, NetworkResult};
