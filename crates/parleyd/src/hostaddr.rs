//! Which address of this machine browsers should send relayed media to, when the admin
//! listens on all interfaces (`turn.listen = "0.0.0.0:3478"`) and names no `turn.relay_address`.
//! The packaged config does exactly that, so it works on any server without editing.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::bail;
use parley_config::Config;

/// Fills `turn.relay_address` in from the network interfaces when the relay listens on a
/// wildcard address and none is configured. Reads the interface list; sends nothing.
pub fn resolve_relay_address(config: &mut Config) -> anyhow::Result<()> {
    let turn = &config.turn;
    if !turn.enabled || !turn.listen.ip().is_unspecified() || !turn.relay_address.is_empty() {
        return Ok(());
    }
    let addresses: Vec<Ipv4Addr> = match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces
            .filter_map(|interface| interface.address)
            .filter_map(|address| address.as_sockaddr_in().map(|v4| v4.ip()))
            .collect(),
        Err(e) => bail!(
            "turn.listen is {} and turn.relay_address is not set, and the network interfaces \
             cannot be read ({e}): set turn.relay_address to this server's public IP",
            turn.listen
        ),
    };
    match pick(&addresses) {
        Some(address) => {
            log::info!(
                "turn.relay_address is not set: using {address}, this machine's {} address \
                 (set turn.relay_address if browsers reach the server at another one)",
                if is_global(address) {
                    "public"
                } else {
                    "private"
                }
            );
            config.turn.relay_address = IpAddr::V4(address).to_string();
            Ok(())
        }
        None => bail!(
            "turn.listen is {} and turn.relay_address is not set, and this machine has no \
             IPv4 address other than loopback: set turn.relay_address to the server's public IP",
            turn.listen
        ),
    }
}

/// The first global address, else the first private one; never loopback or link-local.
fn pick(addresses: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let usable = || {
        addresses
            .iter()
            .copied()
            .filter(|a| !a.is_loopback() && !a.is_link_local() && !a.is_unspecified())
    };
    usable().find(|a| is_global(*a)).or_else(|| usable().next())
}

fn is_global(address: Ipv4Addr) -> bool {
    let cgnat = address.octets()[0] == 100 && (64..128).contains(&address.octets()[1]);
    !(address.is_private() || address.is_loopback() || address.is_link_local() || cgnat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn a_public_address_wins_over_private_ones() {
        let found = pick(&[ip("127.0.0.1"), ip("10.0.0.5"), ip("203.0.113.9")]);
        assert_eq!(found, Some(ip("203.0.113.9")));
    }

    #[test]
    fn a_private_address_is_used_when_there_is_no_public_one() {
        let found = pick(&[ip("127.0.0.1"), ip("169.254.1.1"), ip("192.168.1.20")]);
        assert_eq!(found, Some(ip("192.168.1.20")));
    }

    #[test]
    fn loopback_alone_gives_nothing() {
        assert_eq!(pick(&[ip("127.0.0.1")]), None);
    }

    #[test]
    fn an_explicit_relay_address_is_kept() {
        let mut config = Config::default();
        config.turn.listen = "0.0.0.0:3478".parse().unwrap();
        config.turn.relay_address = "198.51.100.4".into();
        resolve_relay_address(&mut config).unwrap();
        assert_eq!(config.turn.relay_address, "198.51.100.4");
    }

    #[test]
    fn a_loopback_listener_needs_no_detection() {
        let mut config = Config::default();
        resolve_relay_address(&mut config).unwrap();
        assert_eq!(config.turn.relay_address, "");
    }
}
