//! Stopping on a signal: SIGTERM (what Kubernetes, systemd and `docker stop` send) and SIGINT
//! (Ctrl-C) ask the process to stop gracefully; a second one while it stops ends it at once.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

/// Installs the handlers; the flag returned is set by the first SIGTERM or SIGINT. A second
/// signal exits the process at once with status 128 + the signal's number (130 for SIGINT, 143
/// for SIGTERM), as shells report a process killed by it.
pub fn install() -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so that it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}
