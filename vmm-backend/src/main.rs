//! `vhost-user-rpmsg`: a vhost-user virtio-rpmsg device (virtio ID 7) that hosts services
//! and routes rpmsg between the guests it serves. The program is
//! [`vamp_vmm_backend::cli::run`].

fn main() -> std::process::ExitCode {
    vamp_vmm_backend::cli::run(std::env::args_os())
}
