//! remoteproc for vamp: the lifecycle of ELF remotes (OpenAMP's remoteproc), run as KVM
//! micro-VMs or as physical cores behind Linux's remoteproc sysfs.

pub mod backend;
pub mod config;
pub mod console;
pub mod elf;
pub mod image;
pub mod images;
pub mod inspect;
pub mod kvm;
pub mod proxy;
pub mod ratelog;
pub mod remoteproc;
pub mod rsc;
pub mod status;
pub mod status_socket;
pub mod sysfs;
