//! One user's connected devices: deviceId → connection.
//!
//! A user has one device, sometimes a few (`calls.max_devices_per_user` bounds them), so the
//! map is a vector kept in deviceId order, searched by bisection. A `BTreeMap` allocated a
//! 368-byte node for the first entry; with thousands of idle users signed in that node was a
//! measurable part of the memory per connection (issue 14), where a vector of one entry is 32
//! bytes (reserved exactly: a first push would make room for four). The order is the
//! `BTreeMap`'s, so which device rings first does not change.

use crate::types::{ConnId, DeviceId};

#[derive(Debug, Default)]
pub(crate) struct Devices {
    by_id: Vec<(DeviceId, ConnId)>,
}

impl Devices {
    pub(crate) fn get(&self, device: &str) -> Option<ConnId> {
        self.position(device).ok().map(|i| self.by_id[i].1)
    }

    /// Binds `device` to `conn`; returns the connection it was bound to before, if any.
    pub(crate) fn insert(&mut self, device: DeviceId, conn: ConnId) -> Option<ConnId> {
        match self.position(&device) {
            Ok(i) => Some(std::mem::replace(&mut self.by_id[i].1, conn)),
            Err(i) => {
                // Room for this one entry only: a Vec grows to 4 entries at its first push.
                self.by_id.reserve_exact(1);
                self.by_id.insert(i, (device, conn));
                None
            }
        }
    }

    /// Unbinds `device`, but only while it is still bound to `conn` (a newer socket of the same
    /// device keeps its place).
    pub(crate) fn remove_if_bound(&mut self, device: &str, conn: ConnId) {
        if let Ok(i) = self.position(device)
            && self.by_id[i].1 == conn
        {
            self.by_id.remove(i);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The connections, in deviceId order.
    pub(crate) fn conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.by_id.iter().map(|(_, conn)| *conn)
    }

    fn position(&self, device: &str) -> Result<usize, usize> {
        self.by_id.binary_search_by(|(id, _)| (**id).cmp(device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_found_by_its_id_and_rebinding_it_returns_the_old_connection() {
        let mut devices = Devices::default();
        assert_eq!(devices.insert("phone".into(), ConnId(1)), None);
        assert_eq!(devices.get("phone"), Some(ConnId(1)));
        assert_eq!(devices.get("laptop"), None);
        assert_eq!(devices.insert("phone".into(), ConnId(2)), Some(ConnId(1)));
        assert_eq!(devices.get("phone"), Some(ConnId(2)));
        assert_eq!(devices.len(), 1);
        assert_eq!(devices.by_id.capacity(), 1, "one device, room for one");
    }

    #[test]
    fn connections_come_in_device_id_order_whatever_the_order_of_sign_in() {
        let mut devices = Devices::default();
        devices.insert("tablet".into(), ConnId(1));
        devices.insert("desk".into(), ConnId(2));
        devices.insert("phone".into(), ConnId(3));
        assert_eq!(
            devices.conns().collect::<Vec<_>>(),
            [ConnId(2), ConnId(3), ConnId(1)]
        );
    }

    #[test]
    fn a_stale_socket_leaving_does_not_unbind_the_device_from_its_newer_socket() {
        let mut devices = Devices::default();
        devices.insert("phone".into(), ConnId(1));
        devices.insert("phone".into(), ConnId(2));
        devices.remove_if_bound("phone", ConnId(1));
        assert_eq!(devices.get("phone"), Some(ConnId(2)));
        devices.remove_if_bound("phone", ConnId(2));
        assert!(devices.is_empty());
        assert_eq!(devices.get("phone"), None);
    }
}
