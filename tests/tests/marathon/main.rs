//! Marathon (and every libmesos framework) reaching Shoal unmodified: ZooKeeper master
//! detection (`zk.rs`), the v0 libprocess scheduler protocol (`v0.rs`), scheduler failover,
//! failover timeouts, partition awareness and acknowledgements over it (`failover.rs`), v0
//! beside v1 and native schedulers on one cell (`mixed.rs`), and bad input on the v0
//! endpoints (`bad_input.rs`). Proven with third-party clients only: mesos-go's v0 packages
//! from Debian, against Debian's ZooKeeper, pymesos, and a harness that frames what
//! libmesos's `sched.cpp` sends with mesos-go's generated types.

mod bad_input;
mod failover;
mod mixed;
mod v0;
mod zk;
