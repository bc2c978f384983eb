//! The appliance repository server and the administrator's CLI (collective-repo).
