//! Marathon (and every libmesos framework) reaching Shoal unmodified: ZooKeeper master
//! detection (`zk.rs`) and the v0 libprocess scheduler protocol (`v0.rs`). Proven with
//! third-party clients only: mesos-go's v0 packages from Debian, against Debian's ZooKeeper,
//! and a harness that frames what libmesos's `sched.cpp` sends with mesos-go's generated
//! types.

mod v0;
mod zk;
