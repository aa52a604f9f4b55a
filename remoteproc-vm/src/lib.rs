//! remoteproc lifecycle for ELF remotes (KVM micro-VMs, Linux remoteproc sysfs). Not built yet: see README "Status".
