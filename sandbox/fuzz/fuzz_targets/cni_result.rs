//! A CNI plugin's stdout after ADD, as `CniInvoker` reads it: JSON into a `Value`, then
//! `NetworkResult::parse` (spec 0.3.x to 1.x) and `pod_ips`, which picks the pod's
//! addresses. The same `Value` is cached and parsed again after a daemon restart.
//!
//! Errors are expected; panics, hangs and unbounded allocation are bugs, and so is a
//! broken invariant: the kept raw JSON is the input, parsing it again gives the same
//! result, and `pod_ips` returns addresses of the result, IPv4 first.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sandbox::cni::NetworkResult;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(result) = NetworkResult::parse(raw.clone()) else {
        return;
    };
    assert_eq!(result.raw, raw);
    assert_eq!(
        NetworkResult::parse(result.raw.clone()).as_ref(),
        Ok(&result)
    );

    let mut names: Vec<&str> = result.interfaces.iter().map(|i| i.name.as_str()).collect();
    names.push("eth0");
    for name in names {
        let ips = result.pod_ips(name);
        assert!(ips.len() <= result.ips.len());
        for a in &ips {
            assert!(result.ips.iter().any(|ip| ip.address == *a));
        }
        // IPv4 first: once an IPv6 address appears, no IPv4 one follows.
        let first_v6 = ips.iter().position(IpAddr::is_ipv6).unwrap_or(ips.len());
        assert!(ips[first_v6..].iter().all(IpAddr::is_ipv6));
    }
});
