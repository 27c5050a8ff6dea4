//! CNI: finding the network configuration and its plugins, and (later) invoking them.

mod config;

pub use config::{NetworkConfigList, NetworkReadiness, find_network};
