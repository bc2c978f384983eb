//! The `uplink` appliance network: the terminal's own network card, shared with the
//! appliances that ask for it, so a desktop appliance reaches the office network and the
//! internet as any PC on that network would.
//!
//! The card becomes the only port of a Linux bridge named `uplink`, and the terminal's own
//! address (DHCP) moves to the bridge, which takes the card's MAC address: to the network
//! the terminal looks exactly as before, and each appliance on `uplink` is one more
//! machine behind the same cable (its own MAC, its own DHCP lease). Doing it at bring-up,
//! before any address exists, is the point: moving a live address later would cut the
//! session's connection to the repository. Other appliance networks are bridges without
//! a card (`ca-NAME`) and stay isolated.

use log::{info, warn};
use std::io;
use support::netif;

/// The bridge's name, which is also the network's name in manifests.
pub const BRIDGE: &str = "uplink";

/// Puts `nic` (MAC `mac`) behind the `uplink` bridge; returns the interface DHCP must run
/// on: the bridge, or the card itself when the bridge cannot be made (then appliances
/// asking for `uplink` start without it, and the terminal still gets on the network).
pub fn attach(nic: &str, mac: [u8; 6]) -> String {
    match try_attach(nic, mac) {
        Ok(()) => {
            info!("{nic}: shared with the appliances as network {BRIDGE}");
            BRIDGE.to_string()
        }
        Err(e) => {
            warn!("{nic}: cannot make the {BRIDGE} bridge ({e}); appliances get no uplink");
            let _ = netif::delete_bridge(BRIDGE);
            nic.to_string()
        }
    }
}

fn try_attach(nic: &str, mac: [u8; 6]) -> io::Result<()> {
    // The bridge driver is a module; init answers modprobe itself.
    let _ = std::process::Command::new("/sbin/modprobe")
        .args(["-q", "bridge"])
        .status();
    netif::create_bridge(BRIDGE)?;
    netif::set_mac(BRIDGE, mac)?;
    netif::add_to_bridge(BRIDGE, nic)?;
    netif::set_up(nic)?;
    netif::set_up(BRIDGE)
}
