//! Bugs an outsider could reach over the network, each with a regression test named after it:
//! probes of a running master and agent on loopback, as a stranger (or a third-party client)
//! would send them. One module per bug; each test runs the real `shoal` binary.

mod connections;
mod cross_site;
mod offers;
mod orphans;
mod overflow;
mod reconcile;
mod sandbox;
mod store_full;
