//! Which peer addresses the relay may talk to.
//!
//! A TURN server that relays to any address is an open proxy into the network it runs in:
//! a client could reach the host's loopback services, the LAN, or a cloud metadata endpoint
//! (169.254.169.254). By default every non-global range is refused; `allowed_peer_ranges`
//! opens ranges explicitly (tests open 127.0.0.0/8, a LAN deployment opens its own subnet).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network in CIDR notation; a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// A CIDR string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid CIDR range {:?}: write an address with an optional prefix length, like \"10.0.0.0/8\" or \"fd00::/8\"",
            self.0
        )
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || CidrError(text.to_owned());
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| error())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| error())?
            }
            Some(_) => return Err(error()),
            None => max,
        };
        if prefix > max {
            return Err(error());
        }
        Ok(Cidr::new(network, prefix))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// `prefix` must not exceed the address length (32 or 128).
    pub const fn new(network: IpAddr, prefix: u8) -> Self {
        Cidr { network, prefix }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(
                u32::from(net) as u128,
                u32::from(ip) as u128,
                self.prefix,
                32,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn prefix_match(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix.min(bits);
    (net >> shift) == (ip >> shift)
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
    Cidr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix)
}

const fn v6(segments: [u16; 8], prefix: u8) -> Cidr {
    let [a, b, c, d, e, f, g, h] = segments;
    Cidr::new(IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), prefix)
}

/// Ranges refused unless explicitly allowed. IPv6 forms that embed an IPv4 address are
/// unwrapped first (see [`embedded_ipv4`]) and checked against the IPv4 list.
pub const DENIED_BY_DEFAULT: &[Cidr] = &[
    v4(0, 0, 0, 0, 8),                 // "this network", incl. the unspecified 0.0.0.0
    v4(10, 0, 0, 0, 8),                // RFC 1918
    v4(100, 64, 0, 0, 10),             // CGNAT, RFC 6598
    v4(127, 0, 0, 0, 8),               // loopback
    v4(169, 254, 0, 0, 16),            // link-local, incl. the cloud metadata service
    v4(172, 16, 0, 0, 12),             // RFC 1918
    v4(192, 0, 0, 0, 24),              // IETF protocol assignments
    v4(192, 168, 0, 0, 16),            // RFC 1918
    v4(198, 18, 0, 0, 15),             // benchmarking networks
    v4(224, 0, 0, 0, 4),               // multicast
    v4(240, 0, 0, 0, 4),               // reserved, incl. broadcast 255.255.255.255
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128), // unspecified
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128), // loopback
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), // local-use NAT64, RFC 8215
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), // discard-only
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), // unique local
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), // link-local
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), // deprecated site-local
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), // multicast
];

/// The IPv4 address an IPv6 address stands for, if it is IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-translated (`::ffff:0:a.b.c.d`, SIIT), IPv4-compatible (`::a.b.c.d`, deprecated but
/// still routed by some stacks), in the well-known NAT64 prefix (`64:ff9b::a.b.c.d`, which a
/// NAT64 gateway turns into IPv4), 6to4 (`2002:AABB:CCDD::/48`, which a 6to4 relay delivers
/// to the IPv4 address AABBCCDD), or Teredo (`2001:0::/32`, whose last 32 bits are the
/// client's IPv4 address inverted; a Teredo relay delivers there).
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return Some(mapped);
    }
    let segments = ip.segments();
    let low = Ipv4Addr::new(
        (segments[6] >> 8) as u8,
        segments[6] as u8,
        (segments[7] >> 8) as u8,
        segments[7] as u8,
    );
    if segments[..6] == [0; 6] && u32::from(low) > 1 {
        return Some(low); // ::a.b.c.d, but not :: and ::1 which are IPv6's own
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || segments[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(low);
    }
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::from(
            (u32::from(segments[1]) << 16) | u32::from(segments[2]),
        ));
    }
    if segments[..2] == [0x2001, 0] {
        return Some(Ipv4Addr::from(!u32::from(low)));
    }
    None
}

/// The peer-address policy: denied-by-default ranges minus the explicitly allowed ones.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    allowed: Vec<Cidr>,
}

impl PeerPolicy {
    pub fn new(allowed: Vec<Cidr>) -> Self {
        PeerPolicy { allowed }
    }

    /// Parses `turn.allowed_peer_ranges`.
    pub fn from_ranges<S: AsRef<str>>(ranges: &[S]) -> Result<Self, CidrError> {
        let allowed = ranges
            .iter()
            .map(|range| range.as_ref().parse())
            .collect::<Result<Vec<Cidr>, _>>()?;
        Ok(PeerPolicy { allowed })
    }

    /// Whether the relay may exchange packets with `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        // Check the address as written and the IPv4 address it embeds: an allow-list entry in
        // either form opens it, a denied range in either form closes it.
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let candidates = [Some(ip), embedded];
        let candidates = candidates.iter().flatten();
        if candidates
            .clone()
            .any(|c| self.allowed.iter().any(|range| range.contains(*c)))
        {
            return true;
        }
        !candidates
            .clone()
            .any(|c| DENIED_BY_DEFAULT.iter().any(|range| range.contains(*c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn global_addresses_are_allowed() {
        let policy = PeerPolicy::default();
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7", // Teredo for client 8.8.8.8
        ] {
            assert!(policy.allows(ip(good)), "{good}");
        }
    }

    #[test]
    fn non_global_addresses_are_refused_by_default() {
        let policy = PeerPolicy::default();
        for bad in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "169.254.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:192.168.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::8.8.8.8",
            "::ffff:0:10.0.0.1",
            "::ffff:0:127.0.0.1",
            "2002:c0a8:0101::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe:1::5",
            "2002:0a00:0001::",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo for client 10.0.0.1
            "fdff:ffff::1",
        ] {
            assert!(!policy.allows(ip(bad)), "{bad} must be refused");
        }
    }

    #[test]
    fn every_ipv6_form_embeds_the_same_ipv4_address() {
        for (form, embedded) in [
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("::ffff:0:10.1.2.3", "10.1.2.3"),
            ("::10.1.2.3", "10.1.2.3"),
            ("64:ff9b::10.1.2.3", "10.1.2.3"),
            ("2002:0a01:0203::", "10.1.2.3"),
            ("2002:0a01:0203:ffff::1", "10.1.2.3"),
            ("2001:0:1:2:3:4:f5fe:fdfc", "10.1.2.3"),
        ] {
            let form: Ipv6Addr = form.parse().unwrap();
            assert_eq!(
                embedded_ipv4(form),
                Some(embedded.parse().unwrap()),
                "{form}"
            );
        }
        for plain in ["2001:db8::1", "::", "::1", "fd00::1", "2001:4860::1"] {
            let plain: Ipv6Addr = plain.parse().unwrap();
            assert_eq!(embedded_ipv4(plain), None, "{plain}");
        }
    }

    #[test]
    fn allow_list_opens_a_range_in_both_notations() {
        let policy = PeerPolicy::from_ranges(&["127.0.0.0/8"]).unwrap();
        assert!(policy.allows(ip("127.0.0.1")));
        assert!(
            policy.allows(ip("::ffff:127.0.0.1")),
            "mapped form follows the IPv4 entry"
        );
        assert!(!policy.allows(ip("10.0.0.1")), "other ranges stay closed");
        assert!(
            !policy.allows(ip("::1")),
            "IPv6 loopback is a different range"
        );
    }

    #[test]
    fn allow_list_with_single_host() {
        let policy = PeerPolicy::from_ranges(&["192.168.1.10", "fd00::/8"]).unwrap();
        assert!(policy.allows(ip("192.168.1.10")));
        assert!(!policy.allows(ip("192.168.1.11")));
        assert!(policy.allows(ip("fd00::5")));
    }

    #[test]
    fn zero_prefix_allows_everything_of_that_family() {
        let policy = PeerPolicy::from_ranges(&["0.0.0.0/0"]).unwrap();
        assert!(policy.allows(ip("127.0.0.1")));
        assert!(!policy.allows(ip("::1")));
    }

    #[test]
    fn cidr_parsing_rejects_nonsense() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "host/8",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        let error = PeerPolicy::from_ranges(&["10.0.0.0/8", "nope"]).unwrap_err();
        assert!(error.to_string().contains("\"nope\""));
    }

    #[test]
    fn cidr_contains_respects_prefix() {
        let net: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(net.contains(ip("172.16.0.0")));
        assert!(net.contains(ip("172.31.255.255")));
        assert!(!net.contains(ip("172.32.0.0")));
        assert!(
            !net.contains(ip("::ffff:172.16.0.1")),
            "families never mix inside Cidr"
        );
        assert_eq!(net.to_string(), "172.16.0.0/12");
    }
}
