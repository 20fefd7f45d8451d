//! Marathon (and every libmesos framework) reaching Shoal unmodified: ZooKeeper master
//! detection (`zk.rs`), the v0 libprocess scheduler protocol (`v0.rs`), and scheduler
//! failover, failover timeouts, partition awareness and acknowledgements over it
//! (`failover.rs`). Proven with third-party clients only: mesos-go's v0 packages from
//! Debian, against Debian's ZooKeeper, and a harness that frames what libmesos's
//! `sched.cpp` sends with mesos-go's generated types.

mod failover;
mod v0;
mod zk;
