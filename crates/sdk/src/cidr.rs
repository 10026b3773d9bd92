//! CIDR blocks that bind a token or a credential to client addresses (`token_bound_cidrs`,
//! `secret_id_bound_cidrs`): `10.0.0.0/8`, `2001:db8::/32`, or a single address.

use std::net::IpAddr;

use crate::{LogicalError, Result};

/// A parsed CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr> {
        let bad = || LogicalError::InvalidRequest(format!("invalid CIDR block {text:?}"));
        let (addr, len) = match text.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
        };
        Ok(Cidr {
            network,
            prefix_len,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix_len,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), 128, self.prefix_len)
            }
            (IpAddr::V4(net), IpAddr::V6(ip)) => ip.to_ipv4_mapped().is_some_and(|ip| {
                Cidr {
                    network: IpAddr::V4(net),
                    ..*self
                }
                .contains(IpAddr::V4(ip))
            }),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn same_prefix(a: u128, b: u128, bits: u32, prefix_len: u8) -> bool {
    let keep = u32::from(prefix_len).min(bits);
    let shift = bits - keep;
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

/// Whether every block of `inner` lies within some block of `outer` (an empty `outer` bounds
/// nothing); an unparsable block lies within nothing.
pub fn cidrs_within(inner: &[String], outer: &[String]) -> bool {
    if outer.is_empty() {
        return true;
    }
    let outer: Vec<Cidr> = outer.iter().filter_map(|c| Cidr::parse(c).ok()).collect();
    inner.iter().all(|c| {
        Cidr::parse(c).is_ok_and(|block| {
            outer.iter().any(|o| {
                o.prefix_len <= block.prefix_len
                    && o.network.is_ipv4() == block.network.is_ipv4()
                    && o.contains(block.network)
            })
        })
    })
}

/// Check every block of a list (on write), returning them trimmed.
pub fn validate_cidrs(list: &[String]) -> Result<Vec<String>> {
    list.iter()
        .map(|c| Cidr::parse(c).map(|_| c.trim().to_owned()))
        .collect()
}

/// Whether `remote_addr` lies in one of `cidrs`; an empty list allows every address, a
/// missing or unparsable address none.
pub fn addr_allowed(remote_addr: Option<&str>, cidrs: &[String]) -> bool {
    if cidrs.is_empty() {
        return true;
    }
    let Some(ip) = remote_addr.and_then(|a| a.parse::<IpAddr>().ok()) else {
        return false;
    };
    cidrs
        .iter()
        .filter_map(|c| Cidr::parse(c).ok())
        .any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_within_blocks() {
        let role = vec!["10.0.0.0/8".to_owned(), "192.168.1.0/24".to_owned()];
        let within = |list: &[&str]| {
            let list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
            cidrs_within(&list, &role)
        };
        assert!(within(&["10.1.0.0/16", "192.168.1.7"]));
        assert!(within(&[]));
        assert!(!within(&["10.0.0.0/7"]), "wider than the role's");
        assert!(!within(&["192.168.2.0/24"]));
        assert!(!within(&["2001:db8::/32"]));
        assert!(cidrs_within(&["1.2.3.4".to_owned()], &[]));
    }

    #[test]
    fn blocks_and_single_addresses() {
        let list = vec!["10.0.0.0/8".to_owned(), "192.168.1.7".to_owned()];
        assert!(addr_allowed(Some("10.2.3.4"), &list));
        assert!(addr_allowed(Some("192.168.1.7"), &list));
        assert!(!addr_allowed(Some("192.168.1.8"), &list));
        assert!(!addr_allowed(Some("11.0.0.1"), &list));
        assert!(!addr_allowed(None, &list));
        assert!(addr_allowed(None, &[]));
        let v6 = vec!["2001:db8::/32".to_owned(), "0.0.0.0/0".to_owned()];
        assert!(addr_allowed(Some("2001:db8::1"), &v6));
        assert!(addr_allowed(Some("127.0.0.1"), &v6));
        assert!(addr_allowed(Some("::ffff:127.0.0.1"), &v6));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
        assert!(validate_cidrs(&["127.0.0.1/32".into(), "x".into()]).is_err());
    }
}
