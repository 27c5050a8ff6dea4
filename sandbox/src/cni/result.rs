//! The parts of a CNI result berth uses (spec 0.3.x to 1.x): interfaces and IPs. The raw
//! JSON is kept too, because it is passed back verbatim as `prevResult`.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// The netns path for interfaces inside the pod; empty for host-side ones.
    #[serde(default)]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IpConfig {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Deserialize)]
struct RawIp {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<RawIp>,
}

impl NetworkResult {
    pub fn parse(raw: Value) -> Result<NetworkResult, String> {
        let r: RawResult =
            serde_json::from_value(raw.clone()).map_err(|e| format!("malformed result: {e}"))?;
        let mut ips = Vec::new();
        for ip in r.ips {
            let (addr, len) = ip
                .address
                .split_once('/')
                .ok_or_else(|| format!("IP {:?} has no prefix length", ip.address))?;
            let address: IpAddr = addr
                .parse()
                .map_err(|_| format!("IP {:?} is not an address", ip.address))?;
            let prefix_len: u8 = len
                .parse()
                .map_err(|_| format!("IP {:?} has a bad prefix length", ip.address))?;
            let gateway = match ip.gateway {
                Some(g) if !g.is_empty() => Some(
                    g.parse()
                        .map_err(|_| format!("gateway {g:?} is not an address"))?,
                ),
                _ => None,
            };
            ips.push(IpConfig {
                address,
                prefix_len,
                gateway,
                interface: ip.interface,
            });
        }
        Ok(NetworkResult {
            interfaces: r.interfaces,
            ips,
            raw,
        })
    }

    /// The addresses on the pod's `ifname`, IPv4 first; when the result does not say which
    /// interface an address is on, every address counts.
    pub fn pod_ips(&self, ifname: &str) -> Vec<IpAddr> {
        let on_if = |ip: &&IpConfig| match ip.interface {
            Some(i) => self
                .interfaces
                .get(i)
                .is_some_and(|iface| iface.name == ifname && !iface.sandbox.is_empty()),
            None => true,
        };
        let mut out: Vec<IpAddr> = self.ips.iter().filter(on_if).map(|ip| ip.address).collect();
        out.sort_by_key(|a| a.is_ipv6());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_result_gives_the_pod_ip() {
        let raw: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0",
                "interfaces":[{"name":"berth0","mac":"aa:bb:cc:dd:ee:ff"},
                              {"name":"veth1234","mac":"11:22:33:44:55:66"},
                              {"name":"eth0","mac":"66:55:44:33:22:11","sandbox":"/run/berth/pods/x/ns/net"}],
                "ips":[{"interface":2,"address":"fd00:88::5/64","gateway":"fd00:88::1"},
                       {"interface":2,"address":"10.88.0.5/16","gateway":"10.88.0.1"}],
                "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#,
        )
        .unwrap();
        let r = NetworkResult::parse(raw).unwrap();
        assert_eq!(r.ips[1].prefix_len, 16);
        assert_eq!(r.ips[1].gateway, Some("10.88.0.1".parse().unwrap()));
        let ips = r.pod_ips("eth0");
        assert_eq!(ips[0], "10.88.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(ips[1], "fd00:88::5".parse::<IpAddr>().unwrap());
        assert!(r.pod_ips("eth1").is_empty());
    }

    #[test]
    fn old_results_without_interfaces_count() {
        let raw: Value = serde_json::from_str(
            r#"{"cniVersion":"0.3.1","ips":[{"version":"4","address":"10.1.2.3/24"}]}"#,
        )
        .unwrap();
        let r = NetworkResult::parse(raw).unwrap();
        assert_eq!(r.pod_ips("eth0"), ["10.1.2.3".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn malformed_results_are_errors() {
        for bad in [
            r#"{"ips":[{"address":"10.1.2.3"}]}"#,
            r#"{"ips":[{"address":"ten/8"}]}"#,
            r#"{"ips":"no"}"#,
        ] {
            assert!(
                NetworkResult::parse(serde_json::from_str(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
        assert!(
            NetworkResult::parse(serde_json::json!({}))
                .unwrap()
                .ips
                .is_empty()
        );
    }
}
