//! Appliance networks: one Linux bridge per network the appliance set joins, created for
//! the session. The VMM attaches each appliance's tap to its bridge; appliances on the
//! same network then reach each other and nothing else.

use std::io;
use support::netif;

/// Creates bridge `name` (an existing one is fine) and sets it up.
pub fn ensure(name: &str) -> io::Result<()> {
    netif::create_bridge(name)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create bridge {name}: {e}")))?;
    netif::set_up(name)
}

/// Takes bridge `name` down and removes it (taps go when their VMs end).
pub fn remove(name: &str) -> io::Result<()> {
    netif::delete_bridge(name)
}
