// SPDX-License-Identifier: GPL-2.0-only
/*
 * vamp_test_rproc: a test remote core for vamp's QEMU guest kernel.
 *
 * License: GPL-2.0-only, because it is a Linux kernel module that uses GPL-only symbols. It is a
 * test fixture built by tests/provision/remote-core.sh for the guest; it is not shipped.
 *
 * What it stands in for: a Cortex-R5 core of a ZynqMP behind zynqmp_r5_remoteproc, seen from the
 * Linux side through the remoteproc core: firmware is an ELF32 whose PT_LOAD segments land in the
 * core's local memory (here a 64 KiB "sram" at device address 0, from dma_alloc_coherent), the
 * ".resource_table" section declares a trace buffer and a vdev (rpmsg, two vrings, name-service
 * feature), and `start`/`stop`/`kick` drive the core. The "core" is a kernel thread that plays the
 * remote's side of the rpmsg vdev (the virtio device role): it announces "rpmsg-client-sample"
 * and "rpmsg-openamp-demo-channel" through the name service, echoes every message it receives
 * (after echoing "goodbye!" on the sample channel it withdraws that channel),
 * writes lines to the trace buffer, and interrupts Linux with rproc_vq_interrupt().
 *
 * What it does not model: TCM banks and their lockstep/split modes, power domains, the IPI
 * mailbox (kick wakes the thread directly), PM firmware calls (no EEMI), cache maintenance.
 * Device-side vring access is a small split-ring walk written here (the guest config has no
 * VHOST_RING, whose only selectors pull in unrelated drivers); buffer addresses in the
 * descriptors are guest-physical (the rproc virtio transport does not use the DMA API), so they
 * are checked against valid RAM before use.
 *
 * Crash: the core's own debugfs file (remoteproc/remoteproc0/crash) reports a crash; a message
 * "crash" on either channel makes the core report a watchdog crash itself. Recovery (the default)
 * stops and restarts it.
 */
#include <linux/dma-mapping.h>
#include <linux/io.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/platform_device.h>
#include <linux/remoteproc.h>
#include <linux/rpmsg/ns.h>
#include <linux/virtio_ring.h>
#include <linux/wait.h>

/* rproc_elf_* and rproc_vq_interrupt(): exported, declared in the core's internal header. */
#include "remoteproc_internal.h"

#define VTR_NAME "vamp-test-core"
#define VTR_FIRMWARE "vamp-test-core.elf"
/* The core's local memory: device addresses [0, VTR_SRAM_SIZE). */
#define VTR_SRAM_SIZE 0x10000
/* The channels the remote announces, at these endpoint addresses. */
#define VTR_SAMPLE_NAME "rpmsg-client-sample"
#define VTR_ADDR_SAMPLE 0x400
#define VTR_DEMO_NAME "rpmsg-openamp-demo-channel"
#define VTR_ADDR_DEMO 0x401
/* After echoing this on the sample channel the remote withdraws that channel (as the sample does). */
#define VTR_GOODBYE "goodbye!"
/* How often the thread looks at the rings without a kick (it also waits for Linux's rx buffers). */
#define VTR_POLL_MS 50

/* The rpmsg header as it is on the wire (little-endian; the module is for x86 guests). */
struct vtr_rpmsg_hdr {
	__le32 src;
	__le32 dst;
	__le32 reserved;
	__le16 len;
	__le16 flags;
	u8 data[];
} __packed;

/*
 * Device-side state of one split vring. The ring layout is copied by value: the virtqueue that
 * holds Linux's copy is freed when the vdev stops, before ops->stop ends the thread, while the
 * ring memory itself (a carveout) lives until the resources are cleaned up after ops->stop.
 */
struct vtr_ring {
	struct vring layout;
	const struct vring *vr;
	u16 last_avail;
	int notifyid;
};

struct vtr_core {
	struct rproc *rproc;
	void *sram;
	dma_addr_t sram_dma;
	struct task_struct *thread;
	wait_queue_head_t wq;
	atomic_t kicked;
	/* Ring state lives for one run of the thread. */
	struct vtr_ring rx; /* vring0: Linux's receive queue; the remote fills its buffers */
	struct vtr_ring tx; /* vring1: Linux's send queue; the remote consumes its buffers */
	bool announced;
	char *trace;
	size_t trace_len;
	size_t trace_pos;
	unsigned long echoed;
};

static struct platform_device *vtr_pdev;

static __printf(2, 3) void vtr_trace(struct vtr_core *core, const char *fmt, ...)
{
	char line[96];
	va_list ap;
	int n;

	if (!core->trace || core->trace_len < 2)
		return;
	va_start(ap, fmt);
	n = vscnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	line[n++] = '\n';
	/* Wrap to the start when full; the buffer stays NUL-terminated for debugfs readers. */
	if (core->trace_pos + n + 1 > core->trace_len)
		core->trace_pos = 0;
	if (n + 1 > core->trace_len)
		return;
	memcpy(core->trace + core->trace_pos, line, n);
	core->trace_pos += n;
	core->trace[core->trace_pos] = '\0';
}

/* The trace buffer the loaded resource table declares (its da lies in our sram). */
static void vtr_find_trace(struct vtr_core *core)
{
	struct rproc *rproc = core->rproc;
	struct resource_table *table = rproc->table_ptr;
	size_t size = rproc->table_sz;
	u32 i;

	core->trace = NULL;
	core->trace_len = 0;
	core->trace_pos = 0;
	if (!table || size < sizeof(*table))
		return;
	for (i = 0; i < table->num; i++) {
		u32 off;
		struct fw_rsc_hdr *hdr;
		struct fw_rsc_trace *tr;

		if (struct_size(table, offset, i + 1) > size)
			return;
		off = table->offset[i];
		if (off > size || size - off < sizeof(*hdr) + sizeof(*tr))
			continue;
		hdr = (void *)table + off;
		if (hdr->type != RSC_TRACE)
			continue;
		tr = (void *)(hdr + 1);
		core->trace = rproc_da_to_va(rproc, tr->da, tr->len, NULL);
		if (core->trace)
			core->trace_len = tr->len;
		return;
	}
}

/* Map a guest-physical buffer named by a descriptor, or NULL if it is not plain RAM. */
static void *vtr_buf(u64 addr, u32 len)
{
	if (!len || addr + len < addr)
		return NULL;
	if (!pfn_valid(PHYS_PFN(addr)) || !pfn_valid(PHYS_PFN(addr + len - 1)))
		return NULL;
	return phys_to_virt(addr);
}

/* Take the next available descriptor; false if Linux has made none available. */
static bool vtr_pop(struct vtr_ring *r, u16 *head, void **buf, u32 *len)
{
	const struct vring *vr = r->vr;
	u16 avail_idx = le16_to_cpu((__force __le16)READ_ONCE(vr->avail->idx));
	u16 h;
	u64 addr;

	if (avail_idx == r->last_avail)
		return false;
	/* Read the ring entry and descriptor only after seeing the index that publishes them. */
	virt_rmb();
	h = le16_to_cpu((__force __le16)READ_ONCE(vr->avail->ring[r->last_avail % vr->num]));
	r->last_avail++;
	if (h >= vr->num) {
		*buf = NULL;
		*head = 0;
		*len = 0;
		return true;
	}
	addr = le64_to_cpu((__force __le64)READ_ONCE(vr->desc[h].addr));
	*len = le32_to_cpu((__force __le32)READ_ONCE(vr->desc[h].len));
	*head = h;
	*buf = vtr_buf(addr, *len);
	return true;
}

static void vtr_push(struct vtr_ring *r, u16 head, u32 len)
{
	const struct vring *vr = r->vr;
	u16 used_idx = le16_to_cpu((__force __le16)vr->used->idx);
	struct vring_used_elem *e = &vr->used->ring[used_idx % vr->num];

	WRITE_ONCE(e->id, (__force __virtio32)cpu_to_le32(head));
	WRITE_ONCE(e->len, (__force __virtio32)cpu_to_le32(len));
	/* The element must be visible before the index that publishes it. */
	virt_wmb();
	WRITE_ONCE(vr->used->idx, (__force __virtio16)cpu_to_le16(used_idx + 1));
}

/* Send one message to Linux in the next receive buffer; false if none is available. */
static bool vtr_send(struct vtr_core *core, u32 src, u32 dst, const void *data, u16 len)
{
	struct vtr_rpmsg_hdr *msg;
	void *buf;
	u16 head;
	u32 cap;

	if (!vtr_pop(&core->rx, &head, &buf, &cap))
		return false;
	if (!buf || cap < sizeof(*msg) + len) {
		vtr_push(&core->rx, head, 0);
		vtr_trace(core, "rx buffer %u unusable (len %u)", head, cap);
		return true;
	}
	msg = buf;
	msg->src = cpu_to_le32(src);
	msg->dst = cpu_to_le32(dst);
	msg->reserved = 0;
	msg->len = cpu_to_le16(len);
	msg->flags = 0;
	memcpy(msg->data, data, len);
	vtr_push(&core->rx, head, sizeof(*msg) + len);
	return true;
}

/* A name-service message: flags RPMSG_NS_CREATE announces the channel, RPMSG_NS_DESTROY withdraws it. */
static void vtr_announce(struct vtr_core *core, const char *name, u32 addr, u32 flags)
{
	const char *what = flags == RPMSG_NS_CREATE ? "announced" : "withdrew";
	struct rpmsg_ns_msg ns = {};

	strscpy(ns.name, name, sizeof(ns.name));
	ns.addr = (__force __rpmsg32)cpu_to_le32(addr);
	ns.flags = (__force __rpmsg32)cpu_to_le32(flags);
	if (vtr_send(core, addr, RPMSG_NS_ADDR, &ns, sizeof(ns)))
		vtr_trace(core, "%s %s at 0x%x", what, name, addr);
	else
		vtr_trace(core, "no rx buffer: not %s %s", what, name);
}

/* The vdev's vrings once Linux's virtio driver has set up its queues. */
static bool vtr_rings_ready(struct vtr_core *core)
{
	struct rproc_vdev *rvdev;
	struct virtqueue *rvq, *svq;

	rvdev = list_first_entry_or_null(&core->rproc->rvdevs, struct rproc_vdev, node);
	if (!rvdev)
		return false;
	rvq = READ_ONCE(rvdev->vring[0].vq);
	svq = READ_ONCE(rvdev->vring[1].vq);
	if (!rvq || !svq)
		return false;
	core->rx.layout = *virtqueue_get_vring(rvq);
	core->rx.vr = &core->rx.layout;
	core->rx.notifyid = rvdev->vring[0].notifyid;
	core->tx.layout = *virtqueue_get_vring(svq);
	core->tx.vr = &core->tx.layout;
	core->tx.notifyid = rvdev->vring[1].notifyid;
	/* Announce only once Linux has posted its receive buffers (its driver is up). */
	return READ_ONCE(core->rx.vr->avail->idx) != 0;
}

/* Consume Linux's sent messages and echo each back; returns how many were consumed. */
static unsigned int vtr_serve(struct vtr_core *core)
{
	unsigned int consumed = 0;
	bool sent = false;
	struct vtr_rpmsg_hdr *msg;
	void *buf;
	u16 head;
	u32 len;

	while (vtr_pop(&core->tx, &head, &buf, &len)) {
		u16 plen;
		u32 src, dst;

		consumed++;
		msg = buf;
		if (!msg || len < sizeof(*msg)) {
			vtr_trace(core, "tx buffer %u unusable (len %u)", head, len);
			vtr_push(&core->tx, head, 0);
			continue;
		}
		plen = le16_to_cpu(msg->len);
		src = le32_to_cpu(msg->src);
		dst = le32_to_cpu(msg->dst);
		if (plen > len - sizeof(*msg)) {
			vtr_trace(core, "message len %u exceeds its buffer %u", plen, len);
		} else if (dst == VTR_ADDR_SAMPLE || dst == VTR_ADDR_DEMO) {
			if (plen == 5 && !memcmp(msg->data, "crash", 5)) {
				vtr_trace(core, "crash requested by 0x%x", src);
				rproc_report_crash(core->rproc, RPROC_WATCHDOG);
			} else if (vtr_send(core, dst, src, msg->data, plen)) {
				sent = true;
				core->echoed++;
				vtr_trace(core, "echo %u bytes 0x%x->0x%x (#%lu)", plen, src, dst,
					  core->echoed);
				/* The sample's last message: answer it, then withdraw the channel. */
				if (dst == VTR_ADDR_SAMPLE && plen == sizeof(VTR_GOODBYE) - 1 &&
				    !memcmp(msg->data, VTR_GOODBYE, plen))
					vtr_announce(core, VTR_SAMPLE_NAME, VTR_ADDR_SAMPLE,
						     RPMSG_NS_DESTROY);
			} else {
				vtr_trace(core, "no rx buffer for the echo to 0x%x", src);
			}
		} else {
			vtr_trace(core, "message to unknown address 0x%x dropped", dst);
		}
		vtr_push(&core->tx, head, 0);
	}
	if (consumed)
		rproc_vq_interrupt(core->rproc, core->tx.notifyid);
	if (sent)
		rproc_vq_interrupt(core->rproc, core->rx.notifyid);
	return consumed;
}

static int vtr_thread(void *data)
{
	struct vtr_core *core = data;

	vtr_trace(core, "vamp-test-core running");
	while (!kthread_should_stop()) {
		wait_event_interruptible_timeout(core->wq,
						 atomic_read(&core->kicked) || kthread_should_stop(),
						 msecs_to_jiffies(VTR_POLL_MS));
		atomic_set(&core->kicked, 0);
		if (!core->announced) {
			if (!vtr_rings_ready(core))
				continue;
			vtr_announce(core, VTR_SAMPLE_NAME, VTR_ADDR_SAMPLE, RPMSG_NS_CREATE);
			vtr_announce(core, VTR_DEMO_NAME, VTR_ADDR_DEMO, RPMSG_NS_CREATE);
			core->announced = true;
			rproc_vq_interrupt(core->rproc, core->rx.notifyid);
		}
		vtr_serve(core);
	}
	return 0;
}

static int vtr_start(struct rproc *rproc)
{
	struct vtr_core *core = rproc->priv;
	struct task_struct *t;

	memset(&core->rx, 0, sizeof(core->rx));
	memset(&core->tx, 0, sizeof(core->tx));
	core->announced = false;
	atomic_set(&core->kicked, 0);
	vtr_find_trace(core);
	t = kthread_run(vtr_thread, core, "vamp-test-core");
	if (IS_ERR(t))
		return PTR_ERR(t);
	core->thread = t;
	dev_info(&rproc->dev, "core started (trace %zu bytes)\n", core->trace_len);
	return 0;
}

static int vtr_stop(struct rproc *rproc)
{
	struct vtr_core *core = rproc->priv;

	if (core->thread) {
		kthread_stop(core->thread);
		core->thread = NULL;
	}
	core->trace = NULL;
	dev_info(&rproc->dev, "core stopped after %lu echoes\n", core->echoed);
	return 0;
}

static void vtr_kick(struct rproc *rproc, int vqid)
{
	struct vtr_core *core = rproc->priv;

	atomic_set(&core->kicked, 1);
	wake_up(&core->wq);
}

static void *vtr_da_to_va(struct rproc *rproc, u64 da, size_t len, bool *is_iomem)
{
	struct vtr_core *core = rproc->priv;

	if (da >= VTR_SRAM_SIZE || len > VTR_SRAM_SIZE - da)
		return NULL;
	return core->sram + da;
}

static const struct rproc_ops vtr_ops = {
	.start = vtr_start,
	.stop = vtr_stop,
	.kick = vtr_kick,
	.da_to_va = vtr_da_to_va,
	.parse_fw = rproc_elf_load_rsc_table,
	.find_loaded_rsc_table = rproc_elf_find_loaded_rsc_table,
	.load = rproc_elf_load_segments,
	.sanity_check = rproc_elf_sanity_check,
	.get_boot_addr = rproc_elf_get_boot_addr,
};

static int vtr_probe(struct platform_device *pdev)
{
	struct device *dev = &pdev->dev;
	struct vtr_core *core;
	struct rproc *rproc;
	int ret;

	ret = dma_coerce_mask_and_coherent(dev, DMA_BIT_MASK(32));
	if (ret)
		return ret;
	rproc = devm_rproc_alloc(dev, VTR_NAME, &vtr_ops, VTR_FIRMWARE, sizeof(*core));
	if (!rproc)
		return -ENOMEM;
	core = rproc->priv;
	core->rproc = rproc;
	init_waitqueue_head(&core->wq);
	core->sram = dmam_alloc_coherent(dev, VTR_SRAM_SIZE, &core->sram_dma, GFP_KERNEL);
	if (!core->sram)
		return -ENOMEM;
	rproc->auto_boot = false;
	platform_set_drvdata(pdev, rproc);
	ret = devm_rproc_add(dev, rproc);
	if (ret)
		return ret;
	dev_info(dev, "registered %s (firmware %s, sram %u bytes)\n", VTR_NAME, VTR_FIRMWARE,
		 VTR_SRAM_SIZE);
	return 0;
}

static struct platform_driver vtr_driver = {
	.probe = vtr_probe,
	.driver = { .name = VTR_NAME },
};

static int __init vtr_init(void)
{
	int ret = platform_driver_register(&vtr_driver);

	if (ret)
		return ret;
	vtr_pdev = platform_device_register_simple(VTR_NAME, -1, NULL, 0);
	if (IS_ERR(vtr_pdev)) {
		platform_driver_unregister(&vtr_driver);
		return PTR_ERR(vtr_pdev);
	}
	return 0;
}

static void __exit vtr_exit(void)
{
	platform_device_unregister(vtr_pdev);
	platform_driver_unregister(&vtr_driver);
}

module_init(vtr_init);
module_exit(vtr_exit);
MODULE_DESCRIPTION("vamp test remote core (remoteproc + rpmsg echo), a test fixture");
MODULE_LICENSE("GPL");
