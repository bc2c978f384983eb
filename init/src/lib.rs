//! The Collective terminal's PID 1, as a library: each module is one duty of init, so
//! it can be tested on its own (unit tests, and network-namespace tests of DHCP).

pub mod cachedisk;
pub mod cachepart;
pub mod children;
pub mod console;
pub mod cpu_load;
pub mod dhcp;
pub mod hotplug;
pub mod kmod;
pub mod kvm;
pub mod logger;
pub mod login;
pub mod mounts;
pub mod net;
pub mod network;
pub mod power;
pub mod rawsock;
pub mod settings;
pub mod status;
pub mod test_pattern;
pub mod uplink;
