//! Bookkeeping for the realtime limits: devices per user, unauthenticated connections per
//! client address, the login sessions that connected sockets use (for the revocation sweep),
//! and the `call:stats` report window of each party.
//!
//! Each counted thing is a guard (`DeviceSlot`, `PendingSlot`) that gives its place back when
//! released or dropped, whichever comes first, so a path that forgets to release cannot leak a
//! place for good.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use parley_call::DeviceId;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent across a panic elsewhere (each change is one statement).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Connected devices per user and the sessions they authenticated with.
#[derive(Debug)]
pub(crate) struct Devices {
    /// `calls.max_devices_per_user`; 0 means no limit.
    max_per_user: usize,
    inner: Mutex<DevicesInner>,
}

#[derive(Debug, Default)]
struct DevicesInner {
    /// user -> deviceId -> sockets using it (more than one only during a takeover). A vector
    /// per user, searched in order, with room for what it holds: a user has one device, a few
    /// at most (`calls.max_devices_per_user`), where a map's smallest table was about 0.1 KiB
    /// per signed-in user (issue 14).
    users: HashMap<i64, Vec<(DeviceId, usize)>>,
    /// session id -> sockets using it.
    sessions: HashMap<i64, usize>,
}

impl Devices {
    pub(crate) fn new(max_per_user: u32) -> Arc<Devices> {
        Arc::new(Devices {
            max_per_user: max_per_user as usize,
            inner: Mutex::new(DevicesInner::default()),
        })
    }

    /// A place for `device` of `user`, or `None` when the user already has the maximum of other
    /// devices connected. A device id that is already connected always gets one: it takes over.
    pub(crate) fn claim(
        self: &Arc<Self>,
        user: i64,
        device: &DeviceId,
        session: i64,
    ) -> Option<DeviceSlot> {
        let mut inner = lock(&self.inner);
        let devices = inner.users.entry(user).or_default();
        match devices.iter().position(|(id, _)| id == device) {
            Some(i) => devices[i].1 += 1,
            None if self.max_per_user > 0 && devices.len() >= self.max_per_user => return None,
            None => {
                // Room for this one entry only: a Vec grows to 4 entries at its first push.
                devices.reserve_exact(1);
                devices.push((device.clone(), 1));
            }
        }
        *inner.sessions.entry(session).or_default() += 1;
        Some(DeviceSlot {
            devices: self.clone(),
            user,
            device: device.clone(),
            session,
            released: AtomicBool::new(false),
        })
    }

    /// The login sessions that connected sockets use right now.
    pub(crate) fn sessions(&self) -> Vec<i64> {
        lock(&self.inner).sessions.keys().copied().collect()
    }

    #[cfg(test)]
    fn count(&self, user: i64) -> usize {
        lock(&self.inner).users.get(&user).map_or(0, Vec::len)
    }

    fn release(&self, user: i64, device: &str, session: i64) {
        let mut inner = lock(&self.inner);
        if let Some(devices) = inner.users.get_mut(&user) {
            if let Some(i) = devices.iter().position(|(id, _)| **id == *device) {
                devices[i].1 -= 1;
                if devices[i].1 == 0 {
                    devices.swap_remove(i);
                }
            }
            if devices.is_empty() {
                inner.users.remove(&user);
            }
        }
        if let Some(count) = inner.sessions.get_mut(&session) {
            *count -= 1;
            if *count == 0 {
                inner.sessions.remove(&session);
            }
        }
    }
}

/// One socket's place among its user's devices.
#[derive(Debug)]
pub(crate) struct DeviceSlot {
    devices: Arc<Devices>,
    user: i64,
    device: DeviceId,
    session: i64,
    released: AtomicBool,
}

impl DeviceSlot {
    /// The deviceId this place is for.
    pub(crate) fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The login session the socket authenticated with.
    pub(crate) fn session(&self) -> i64 {
        self.session
    }

    pub(crate) fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.devices.release(self.user, &self.device, self.session);
        }
    }
}

impl Drop for DeviceSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Engine.IO connections per client address that have not authenticated yet.
#[derive(Debug)]
pub(crate) struct Pending {
    /// `http.max_unauthenticated_per_address`; 0 means no limit.
    max_per_address: usize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

impl Pending {
    pub(crate) fn new(max_per_address: u32) -> Arc<Pending> {
        Arc::new(Pending {
            max_per_address: max_per_address as usize,
            by_address: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more unauthenticated connection from `address`, or `None` when that
    /// address has the maximum already.
    pub(crate) fn claim(self: &Arc<Self>, address: IpAddr) -> Option<PendingSlot> {
        let mut by_address = lock(&self.by_address);
        let count = by_address.entry(address).or_default();
        if self.max_per_address > 0 && *count >= self.max_per_address {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            pending: self.clone(),
            address,
            released: AtomicBool::new(false),
        })
    }

    #[cfg(test)]
    fn count(&self, address: IpAddr) -> usize {
        lock(&self.by_address).get(&address).copied().unwrap_or(0)
    }
}

/// An unauthenticated connection's place; released when it authenticates or closes.
#[derive(Debug)]
pub(crate) struct PendingSlot {
    pending: Arc<Pending>,
    address: IpAddr,
    released: AtomicBool,
}

impl PendingSlot {
    pub(crate) fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut by_address = lock(&self.pending.by_address);
        if let Some(count) = by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// The spec's `call:stats` window: while a call is active, one report per party every
/// [`STATS_INTERVAL`]; after it ended, one final report within [`STATS_AFTER_END`].
pub(crate) const STATS_INTERVAL: Duration = Duration::from_secs(5);
pub(crate) const STATS_AFTER_END: Duration = Duration::from_secs(60);

/// Why a report is refused by the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatsRefusal {
    /// Less than five seconds after this party's previous report.
    TooSoon,
    /// This party already sent its final report.
    FinalSent,
}

/// When each party of a call last reported, and whether its final report came.
#[derive(Debug, Default)]
pub(crate) struct StatsWindow {
    parties: Mutex<HashMap<(String, i64), Party>>,
}

#[derive(Debug, Clone, Copy)]
struct Party {
    last: Instant,
    final_sent: bool,
}

impl StatsWindow {
    /// Takes the report of `user` for `call` at `now` if the window allows it. `ended` says
    /// whether the call is over (then this is the party's one final report).
    pub(crate) fn admit(
        &self,
        call: &str,
        user: i64,
        ended: bool,
        now: Instant,
    ) -> Result<(), StatsRefusal> {
        let mut parties = lock(&self.parties);
        // Forget parties whose calls cannot report any more (bounded by live calls).
        if parties.len() > 1024 {
            parties.retain(|_, p| now.duration_since(p.last) < STATS_AFTER_END * 2);
        }
        let key = (call.to_owned(), user);
        match parties.get_mut(&key) {
            Some(party) if ended => {
                if party.final_sent {
                    return Err(StatsRefusal::FinalSent);
                }
                party.final_sent = true;
                party.last = now;
            }
            Some(party) => {
                if now.duration_since(party.last) < STATS_INTERVAL {
                    return Err(StatsRefusal::TooSoon);
                }
                party.last = now;
            }
            None => {
                parties.insert(
                    key,
                    Party {
                        last: now,
                        final_sent: ended,
                    },
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_capped_per_user_and_a_known_device_takes_over() {
        let devices = Devices::new(2);
        let a = devices.claim(1, &"a".into(), 10).expect("first");
        let b = devices.claim(1, &"b".into(), 10).expect("second");
        assert!(
            devices.claim(1, &"c".into(), 10).is_none(),
            "third device refused"
        );
        let a_again = devices
            .claim(1, &"a".into(), 11)
            .expect("a takeover is not a new device");
        let x = devices
            .claim(2, &"x".into(), 20)
            .expect("another user is not affected");
        assert_eq!(
            lock(&devices.inner).users[&2].capacity(),
            1,
            "one device, room for one"
        );
        drop(x);
        drop(a);
        assert_eq!(devices.count(1), 2, "a is still held by its new socket");
        a_again.release();
        a_again.release();
        assert_eq!(devices.count(1), 1, "released once, however often called");
        let c = devices
            .claim(1, &"c".into(), 12)
            .expect("a freed place is taken again");
        drop(b);
        assert_eq!(
            devices.sessions(),
            vec![12],
            "sessions in use follow the sockets"
        );
        drop(c);
        assert!(devices.sessions().is_empty());
        assert!(
            Devices::new(0).claim(1, &"any".into(), 1).is_some(),
            "0 means no limit"
        );
    }

    #[test]
    fn pending_connections_are_capped_per_address() {
        let pending = Pending::new(2);
        let here: IpAddr = "127.0.0.1".parse().unwrap();
        let there: IpAddr = "::1".parse().unwrap();
        let one = pending.claim(here).expect("first");
        let _two = pending.claim(here).expect("second");
        assert!(pending.claim(here).is_none());
        assert!(pending.claim(there).is_some(), "per address");
        one.release();
        assert_eq!(pending.count(here), 1);
        drop(one);
        assert_eq!(
            pending.count(here),
            1,
            "a released slot's drop changes nothing"
        );
        assert!(pending.claim(here).is_some());
    }

    #[test]
    fn stats_window_allows_one_report_per_interval_and_one_final_report() {
        let window = StatsWindow::default();
        let start = Instant::now();
        assert_eq!(window.admit("c", 1, false, start), Ok(()));
        assert_eq!(
            window.admit("c", 1, false, start + Duration::from_secs(4)),
            Err(StatsRefusal::TooSoon)
        );
        assert_eq!(window.admit("c", 2, false, start), Ok(()), "per party");
        assert_eq!(window.admit("c", 1, false, start + STATS_INTERVAL), Ok(()));
        let end = start + Duration::from_secs(6);
        assert_eq!(
            window.admit("c", 1, true, end),
            Ok(()),
            "final report right after"
        );
        assert_eq!(
            window.admit("c", 1, true, end),
            Err(StatsRefusal::FinalSent)
        );
        assert_eq!(
            window.admit("d", 1, true, end),
            Ok(()),
            "a final report alone"
        );
    }
}
