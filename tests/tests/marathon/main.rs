//! Marathon (and every libmesos framework) reaching Shoal unmodified: ZooKeeper master
//! detection now; the v0 libprocess scheduler protocol next. Proven with real third-party
//! clients only: mesos-go's v0 packages from Debian, against Debian's ZooKeeper.

mod v0;
mod zk;
