//! remoteproc for vamp: the lifecycle of ELF remotes (OpenAMP's remoteproc), run as KVM
//! micro-VMs or as physical cores behind Linux's remoteproc sysfs.

pub mod backend;
pub mod images;
pub mod kvm;
