//! The repository client: login, appliance sets, verification, cache filling and user-data write-back.
