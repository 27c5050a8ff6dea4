//! The per-pod files containers bind-mount: /etc/resolv.conf, /etc/hosts, /etc/hostname.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// DNS settings for the pod's resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl DnsConfig {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }

    /// Each entry is one word: whitespace or control characters would add lines or words
    /// the kubelet never meant.
    pub fn validate(&self) -> Result<(), String> {
        for (what, list) in [
            ("server", &self.servers),
            ("search", &self.searches),
            ("option", &self.options),
        ] {
            for v in list {
                if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(format!("DNS {what} {v:?} is not a single word"));
                }
            }
        }
        for s in &self.servers {
            if s.parse::<IpAddr>().is_err() {
                return Err(format!("DNS server {s:?} is not an IP address"));
            }
        }
        Ok(())
    }
}

/// resolv.conf from a DNS config; None when the config is empty (the caller then copies
/// the host's file, as containerd does).
pub fn render_resolv_conf(dns: &DnsConfig) -> Option<String> {
    if dns.is_empty() {
        return None;
    }
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out += &format!("search {}\n", dns.searches.join(" "));
    }
    for s in &dns.servers {
        out += &format!("nameserver {s}\n");
    }
    if !dns.options.is_empty() {
        out += &format!("options {}\n", dns.options.join(" "));
    }
    Some(out)
}

/// /etc/hosts for a pod with its own network: the localhost lines and, once known, the
/// pod's address under its hostname.
pub fn render_hosts(pod_ip: Option<IpAddr>, hostname: &str) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip
        && !hostname.is_empty()
    {
        out += &format!("{ip}\t{hostname}\n");
    }
    out
}

/// Checks a pod hostname: what sethostname takes, in RFC 1123 letters.
pub fn validate_hostname(h: &str) -> Result<(), String> {
    if h.len() > 64 {
        return Err(format!("hostname {h:?} is longer than 64 characters"));
    }
    if h.chars()
        .any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    {
        return Err(format!(
            "hostname {h:?} may only hold letters, digits, '-' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_has_every_part() {
        let dns = DnsConfig {
            servers: vec!["10.10.10.10".into(), "fd00::53".into()],
            searches: vec!["google.com".into(), "svc.local".into()],
            options: vec!["ndots:8".into(), "edns0".into()],
        };
        dns.validate().unwrap();
        assert_eq!(
            render_resolv_conf(&dns).unwrap(),
            "search google.com svc.local\nnameserver 10.10.10.10\nnameserver fd00::53\noptions ndots:8 edns0\n"
        );
    }

    #[test]
    fn empty_dns_means_the_host_file() {
        assert_eq!(render_resolv_conf(&DnsConfig::default()), None);
        let only_opts = DnsConfig {
            options: vec!["ndots:2".into()],
            ..Default::default()
        };
        assert_eq!(render_resolv_conf(&only_opts).unwrap(), "options ndots:2\n");
    }

    #[test]
    fn dns_entries_cannot_add_lines() {
        let bad = DnsConfig {
            searches: vec!["a\nnameserver 6.6.6.6".into()],
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = DnsConfig {
            servers: vec!["dns.example".into()],
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("not an IP"));
    }

    #[test]
    fn hosts_name_the_pod() {
        let h = render_hosts(Some("10.88.0.7".parse().unwrap()), "web-0");
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.0.7\tweb-0\n"));
        assert!(!render_hosts(None, "web-0").contains("web-0"));
    }

    #[test]
    fn hostnames() {
        validate_hostname("test-hostname").unwrap();
        validate_hostname("").unwrap();
        assert!(validate_hostname("a b").is_err());
        assert!(validate_hostname(&"a".repeat(65)).is_err());
    }
}
