//! Where a deploy may go: `policy.deploy_targets` (`registered`, CIDR
//! ranges and addresses, host names), parsed at start, and the verdict on
//! one `server_ip`. A host name that is not listed itself is judged by
//! every address it resolves to, and the deploy then connects to the
//! address judged, so a second DNS answer cannot move it elsewhere.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use crate::job::ServerAddress;

/// The entry that stands for every registered server's `public_ip`.
const REGISTERED: &str = "registered";

#[derive(Debug, Clone, PartialEq, Eq)]
enum TargetRule {
    Registered,
    /// A CIDR range; a lone address is its own /32 or /128.
    Range(IpNet),
    /// Lower case, without a trailing dot.
    Host(String),
}

/// `policy.deploy_targets`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployTargets(Vec<TargetRule>);

impl DeployTargets {
    /// Parses every entry; the error names the first bad one.
    pub fn parse(entries: &[String]) -> Result<DeployTargets, String> {
        let mut rules = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let rule = parse_rule(entry).map_err(|why| format!("entry {entry:?}: {why}"))?;
            rules.push(rule);
        }
        Ok(DeployTargets(rules))
    }

    /// True when the verdict needs the registered servers' addresses.
    pub(crate) fn uses_registered(&self) -> bool {
        self.0.contains(&TargetRule::Registered)
    }

    /// The verdict on `server_ip` that needs no lookup.
    pub(crate) fn judge(&self, server_ip: &ServerAddress, registered: &Registered) -> Verdict {
        let text = server_ip.as_str();
        if let Ok(ip) = text.parse::<IpAddr>() {
            let ip = ip.to_canonical();
            return if self.allows(ip, registered) {
                Verdict::Address(ip)
            } else {
                Verdict::Refused(format!(
                    "`{text}` is in no range of policy.deploy_targets and is not a registered server's address"
                ))
            };
        }
        let name = host_form(text);
        let listed = self.0.contains(&TargetRule::Host(name.clone()));
        if listed || self.uses_registered() && registered.names.contains(&name) {
            return Verdict::Name;
        }
        let ranges = self.0.iter().any(|r| matches!(r, TargetRule::Range(_)));
        if ranges || self.uses_registered() && !registered.addresses.is_empty() {
            Verdict::Lookup
        } else {
            Verdict::Refused(format!(
                "`{text}` is not a host name listed in policy.deploy_targets"
            ))
        }
    }

    /// The verdict on a host name from the addresses it resolved to: the
    /// first, if every one of them is allowed.
    pub(crate) fn judge_resolved(
        &self,
        name: &str,
        addresses: &[IpAddr],
        registered: &Registered,
    ) -> Result<IpAddr, String> {
        if let Some(outside) = addresses.iter().find(|ip| !self.allows(**ip, registered)) {
            return Err(format!(
                "`{name}` resolves to {outside}, which is in no range of policy.deploy_targets and is not a registered server's address"
            ));
        }
        addresses
            .first()
            .copied()
            .ok_or_else(|| format!("`{name}` resolves to no address"))
    }

    fn allows(&self, ip: IpAddr, registered: &Registered) -> bool {
        self.0.iter().any(|rule| match rule {
            TargetRule::Range(net) => net.contains(&ip),
            TargetRule::Registered => registered.addresses.contains(&ip),
            TargetRule::Host(_) => false,
        })
    }
}

impl Serialize for DeployTargets {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.collect_seq(self.0.iter().map(|rule| match rule {
            TargetRule::Registered => REGISTERED.to_owned(),
            TargetRule::Range(net) => net.to_string(),
            TargetRule::Host(name) => name.clone(),
        }))
    }
}

fn parse_rule(entry: &str) -> Result<TargetRule, String> {
    if entry == REGISTERED {
        return Ok(TargetRule::Registered);
    }
    if entry.contains('/') {
        let net: IpNet = entry
            .parse()
            .map_err(|e| format!("is not a CIDR range ({e})"))?;
        return Ok(TargetRule::Range(net.trunc()));
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(TargetRule::Range(IpNet::from(ip.to_canonical())));
    }
    ServerAddress::parse(entry)
        .map(|_| TargetRule::Host(host_form(entry)))
        .map_err(|_| {
            "must be `registered`, a CIDR range (10.0.0.0/8, 2001:db8::/32), an address or a host name"
                .to_owned()
        })
}

/// Host names compare case-insensitively, with or without the root's dot.
fn host_form(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The registered servers' `public_ip`s, as addresses and as host names.
#[derive(Debug, Default)]
pub(crate) struct Registered {
    addresses: Vec<IpAddr>,
    names: Vec<String>,
}

impl Registered {
    /// Sorts the column's values (text: an address or a host name).
    pub(crate) fn new(public_ips: &[String]) -> Registered {
        let mut registered = Registered::default();
        for value in public_ips {
            match value.trim().parse::<IpAddr>() {
                Ok(ip) => registered.addresses.push(ip.to_canonical()),
                Err(_) => registered.names.push(host_form(value.trim())),
            }
        }
        registered
    }
}

/// What `policy.deploy_targets` says of one `server_ip` before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An allowed address: connect to it.
    Address(IpAddr),
    /// A host name allowed as such (listed, or a registered server's):
    /// connect to the name.
    Name,
    /// A host name allowed only if every address it resolves to is.
    Lookup,
    /// Not allowed, and why.
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(entries: &[&str]) -> DeployTargets {
        let entries: Vec<String> = entries.iter().map(|e| (*e).to_owned()).collect();
        DeployTargets::parse(&entries).unwrap()
    }

    fn judge(entries: &[&str], server_ip: &str, registered: &[&str]) -> Verdict {
        let registered: Vec<String> = registered.iter().map(|r| (*r).to_owned()).collect();
        targets(entries).judge(
            &ServerAddress::parse(server_ip).unwrap(),
            &Registered::new(&registered),
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_inside_a_range_is_allowed_and_connected_to() {
        let ranges = ["10.0.0.0/8", "2001:db8::/32"];
        assert_eq!(
            judge(&ranges, "10.1.2.3", &[]),
            Verdict::Address(ip("10.1.2.3"))
        );
        assert_eq!(
            judge(&ranges, "2001:db8::7", &[]),
            Verdict::Address(ip("2001:db8::7"))
        );
        assert!(matches!(
            judge(&ranges, "11.0.0.1", &[]),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            judge(&ranges, "2001:db9::1", &[]),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn a_lone_address_allows_itself_only() {
        let entries = ["203.0.113.10", "::1"];
        assert!(matches!(
            judge(&entries, "203.0.113.10", &[]),
            Verdict::Address(_)
        ));
        assert!(matches!(
            judge(&entries, "203.0.113.11", &[]),
            Verdict::Refused(_)
        ));
        assert!(matches!(judge(&entries, "::1", &[]), Verdict::Address(_)));
    }

    #[test]
    fn an_ipv4_mapped_ipv6_address_is_judged_as_ipv4() {
        assert_eq!(
            judge(&["10.0.0.0/8"], "::ffff:10.0.0.1", &[]),
            Verdict::Address(ip("10.0.0.1"))
        );
        assert!(matches!(
            judge(&["10.0.0.0/8"], "::ffff:127.0.0.1", &[]),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn registered_allows_the_servers_addresses_only() {
        let registered = ["203.0.113.10", "2001:DB8::0:1", "vps.example.com"];
        assert!(matches!(
            judge(&["registered"], "203.0.113.10", &registered),
            Verdict::Address(_)
        ));
        assert!(matches!(
            judge(&["registered"], "2001:db8::1", &registered),
            Verdict::Address(_)
        ));
        assert!(matches!(
            judge(&["registered"], "203.0.113.11", &registered),
            Verdict::Refused(_)
        ));
        assert_eq!(
            judge(&["registered"], "VPS.example.com.", &registered),
            Verdict::Name
        );
    }

    #[test]
    fn a_listed_host_name_is_allowed_by_name_and_others_need_a_lookup() {
        let entries = ["deploy.example.com", "10.0.0.0/8"];
        assert_eq!(judge(&entries, "Deploy.Example.com", &[]), Verdict::Name);
        assert_eq!(judge(&entries, "localhost", &[]), Verdict::Lookup);
        assert!(matches!(
            judge(&["deploy.example.com"], "evil.example.com", &[]),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            judge(&["registered"], "evil.example.com", &[]),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn every_resolved_address_must_be_allowed() {
        let t = targets(&["10.0.0.0/8", "registered"]);
        let registered = Registered::new(&["192.0.2.5".to_owned()]);
        assert_eq!(
            t.judge_resolved("a", &[ip("10.0.0.1"), ip("192.0.2.5")], &registered),
            Ok(ip("10.0.0.1"))
        );
        let err = t
            .judge_resolved("localhost", &[ip("10.0.0.1"), ip("127.0.0.1")], &registered)
            .unwrap_err();
        assert!(err.contains("127.0.0.1"), "{err}");
        assert!(t.judge_resolved("a", &[], &registered).is_err());
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        for bad in ["10.0.0.0/33", "10.0.0/8", "fe80::/129", "not a host", "a_b"] {
            let err = DeployTargets::parse(&[bad.to_owned()]).unwrap_err();
            assert!(err.starts_with("entry "), "{bad}: {err}");
        }
    }

    #[test]
    fn entries_print_as_they_are_checked() {
        let t = targets(&[" registered ", "10.1.2.3/8", "Host.Example.", "", "::1"]);
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!(["registered", "10.0.0.0/8", "host.example", "::1/128"])
        );
    }
}
