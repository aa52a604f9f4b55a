//! The vhost-user virtio-rpmsg device and inter-guest hub. Not built yet: see README "Status".
