//! Formats shared by every part: chunk ids, manifests, signatures, user records, wire API types.
