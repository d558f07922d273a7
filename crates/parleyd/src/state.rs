//! What every handler can reach. Cheap to clone: everything inside is shared.

use std::sync::Arc;

use parley_config::Config;
use parley_store::Store;

use crate::http::auth::LoginLimiter;
use crate::relay::RelayService;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    /// The effective TURN shared secret (`turn.secret`, or the generated one).
    pub turn_secret: Arc<String>,
    /// The embedded relay; `None` when `turn.enabled = false`.
    pub relay: Option<Arc<RelayService>>,
    /// Login and registration throttling: failed-attempt budgets and the password-hash gate.
    pub login_limiter: Arc<LoginLimiter>,
    /// The call driver (live calls, sockets, presence).
    pub calls: crate::calls::Handle,
    /// The certificate slot of the HTTPS listener (what `/metrics` reports); `None` without TLS.
    pub certificate: Option<Arc<crate::tls::SwappableCert>>,
}
