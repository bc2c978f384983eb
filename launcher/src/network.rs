//! Plugging a VM's network cards into the host: the VMM creates each card's tap and
//! leaves it down; here it comes up on its appliance network's bridge.

use std::io;

/// A network card's place on the host: the bridge its tap joins (`None`: the tap stays
/// alone, for a host that wires it up itself).
pub type Attachment = Option<String>;

/// Brings every tap up and attaches it to its bridge, in card order. Called between
/// `Machine::new` and `Machine::run`, so the guest never sends into an unplugged card.
pub fn plug(taps: &[String], attachments: &[Attachment]) -> io::Result<()> {
    for (tap, bridge) in taps.iter().zip(attachments) {
        if let Some(bridge) = bridge {
            if support::netif::index(bridge).is_err() {
                // The session said so on the screen: the card stays unplugged.
                log::warn!(
                    "{tap}: network bridge {bridge} does not exist; the card stays unplugged"
                );
                continue;
            }
            support::netif::add_to_bridge(bridge, tap).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot attach {tap} to bridge {bridge}: {e} (does the bridge exist?)"),
                )
            })?;
        }
        support::netif::set_up(tap)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bring {tap} up: {e}")))?;
    }
    Ok(())
}
