//! Receiving: the engine's pull API and the callback layer on top of it.
//!
//! The core is pull-style, as in quinn-proto: [`Rpmsg::next_event`] takes one buffer from the
//! receive ring and returns what it held ([`Event`]: a message for a local endpoint, a
//! name-service announcement, or a dropped buffer). It never calls back into its caller, so a
//! driver that owns several engines (the hub) can take an event from one and deliver it into
//! another. A message's buffer stays the peer's loan until [`Rpmsg::finish_rx`] gives it back
//! (or [`Rpmsg::hold_rx`] keeps it). [`Rpmsg::begin_poll`] / [`Rpmsg::end_poll`] bracket a round
//! of events so that what the caller sends and releases meanwhile notifies the peer once.
//!
//! [`Handler`] is the Rust form of OpenAMP's endpoint and name-service callbacks, for firmware
//! and applications: [`Rpmsg::poll`] is a loop over the pull API that hands each event to it.

use super::{EptId, Error, Rpmsg};
use crate::transport::{Buffer, Transport};
use crate::wire::{
    ADDR_ANY, HEADER_LEN, NS_ADDR, NS_MSG_LEN, NS_NAME_LEN, NameServiceMsg, NsFlags, RpmsgHeader,
};
use alloc::vec::Vec;

/// A message for a local endpoint, from [`Rpmsg::next_event`] or given to
/// [`Handler::on_message`]. Its buffer is the peer's until given back: pull-API callers end
/// every message with [`Rpmsg::finish_rx`] (the callback layer does it for its handler).
#[derive(Debug)]
#[must_use = "a received buffer is lost to the peer until given to Rpmsg::finish_rx"]
pub struct Received {
    /// The local endpoint it is addressed to.
    pub ept: EptId,
    /// Sender's address.
    pub src: u32,
    /// Destination address (the endpoint's).
    pub dst: u32,
    /// Payload length.
    pub len: u16,
    pub(super) buf: Buffer,
    held: bool,
}

/// A received buffer kept past its delivery; give it back with [`Rpmsg::release_rx`].
#[derive(Debug)]
#[must_use = "a held buffer is lost to the peer until released"]
pub struct HeldRx {
    /// Sender's address.
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// Payload length.
    pub len: u16,
    pub(super) buf: Buffer,
}

/// Where a received payload lives, for copying it straight into another link's buffer
/// ([`Rpmsg::send_copy_from`]). Valid while its message is being delivered or held.
#[derive(Debug, Clone, Copy)]
pub struct PayloadRef {
    pub(super) buf: Buffer,
    len: u16,
}

impl PayloadRef {
    /// Payload length.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Received {
    /// Where this message's payload lives.
    pub fn payload_ref(&self) -> PayloadRef {
        PayloadRef {
            buf: self.buf,
            len: self.len,
        }
    }
}

impl HeldRx {
    /// Where this held message's payload lives.
    pub fn payload_ref(&self) -> PayloadRef {
        PayloadRef {
            buf: self.buf,
            len: self.len,
        }
    }
}

/// A name-service announcement from the peer, as given to [`Handler::on_name_service`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsEvent<'a> {
    /// The peer announced `name` at `addr`. `bound` is the local endpoint of the same name
    /// that was waiting for a destination and is now bound to `addr`; when `None`, the
    /// handler may create one (OpenAMP's `ns_bind_cb`).
    Created {
        /// Service name.
        name: &'a [u8],
        /// The peer's address.
        addr: u32,
        /// The endpoint bound by this announcement.
        bound: Option<EptId>,
    },
    /// The peer withdrew `name` at `addr`. `unbound` is the local endpoint that pointed at it
    /// and now has no destination (OpenAMP's `ns_unbind_cb`).
    Destroyed {
        /// Service name.
        name: &'a [u8],
        /// The peer's address.
        addr: u32,
        /// The endpoint that lost its destination.
        unbound: Option<EptId>,
    },
}

/// A name-service announcement from the peer, owned (from [`Rpmsg::next_event`]); the engine
/// has already bound or unbound the local endpoint it names. [`event`](Self::event) gives its
/// borrowed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameService {
    name: [u8; NS_NAME_LEN],
    name_len: u8,
    addr: u32,
    created: bool,
    ept: Option<EptId>,
}

impl NameService {
    /// The announcement, as [`Handler::on_name_service`] sees it.
    pub fn event(&self) -> NsEvent<'_> {
        let name = &self.name[..self.name_len as usize];
        if self.created {
            NsEvent::Created {
                name,
                addr: self.addr,
                bound: self.ept,
            }
        } else {
            NsEvent::Destroyed {
                name,
                addr: self.addr,
                unbound: self.ept,
            }
        }
    }
}

/// Why an incoming buffer was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dropped {
    /// Shorter than a header, or its `len` runs past the bytes the peer reported.
    Malformed {
        /// Bytes the peer reported.
        buffer_len: u32,
        /// Payload length the header claims.
        claimed: u16,
    },
    /// No endpoint at the destination address (Linux warns and drops too).
    NoEndpoint {
        /// Source address.
        src: u32,
        /// Destination address.
        dst: u32,
    },
    /// A name-service message of the wrong length or flags.
    BadNameService,
}

/// One thing found in the receive ring by [`Rpmsg::next_event`].
#[derive(Debug)]
#[must_use = "a message's buffer is lost to the peer until given to Rpmsg::finish_rx"]
// Exhaustive on purpose: an event kind a caller does not know could hold a buffer it must
// give back, so a new kind is a breaking change that makes every caller look.
pub enum Event {
    /// A message for a local endpoint: end it with [`Rpmsg::finish_rx`].
    Message(Received),
    /// A name-service announcement (its buffer is already back with the peer).
    NameService(NameService),
    /// An incoming buffer was dropped and counted (already back with the peer).
    Dropped(Dropped),
}

/// Receives what [`Rpmsg::poll`] delivers: the Rust form of OpenAMP's callbacks.
pub trait Handler<T: Transport> {
    /// A message for a local endpoint. Read it with [`Rpmsg::read_payload`]; keep its buffer
    /// with [`Rpmsg::hold_rx`]; reply with any send call.
    fn on_message(&mut self, rpmsg: &mut Rpmsg<T>, msg: &mut Received);

    /// A name-service announcement from the peer.
    fn on_name_service(&mut self, rpmsg: &mut Rpmsg<T>, event: NsEvent<'_>) {
        let _ = (rpmsg, event);
    }

    /// An incoming buffer was dropped (it has already been given back to the peer).
    fn on_dropped(&mut self, why: Dropped) {
        log::debug!("rpmsg: dropped incoming message: {why:?}");
    }
}

impl<T: Transport> Rpmsg<T> {
    /// Copies payload bytes of a message being delivered, from `offset`, into `out`.
    pub fn read_payload(&self, msg: &Received, offset: usize, out: &mut [u8]) -> Result<(), Error> {
        read_payload(&self.transport, &msg.buf, msg.len, offset, out)
    }

    /// Copies payload bytes of a held buffer.
    pub fn read_held(&self, held: &HeldRx, offset: usize, out: &mut [u8]) -> Result<(), Error> {
        read_payload(&self.transport, &held.buf, held.len, offset, out)
    }

    /// The payload of a message, copied into a vector.
    pub fn payload(&self, msg: &Received) -> Result<Vec<u8>, Error> {
        let mut v = alloc::vec![0u8; msg.len as usize];
        self.read_payload(msg, 0, &mut v)?;
        Ok(v)
    }

    /// Where the payload of a message lives in shared memory (for zero-copy readers), as
    /// (address, length) of its first segment after the header.
    pub fn payload_segment(&self, msg: &Received) -> Option<(u64, usize)> {
        let first = msg.buf.segments().first()?;
        let len = (first.len as usize)
            .checked_sub(HEADER_LEN)?
            .min(msg.len as usize);
        Some((first.addr + HEADER_LEN as u64, len))
    }

    /// Keeps a message's buffer past its delivery (OpenAMP `rpmsg_hold_rx_buffer`):
    /// [`finish_rx`](Self::finish_rx) then leaves it alone.
    pub fn hold_rx(&mut self, msg: &mut Received) -> HeldRx {
        msg.held = true;
        self.held_rx += 1;
        HeldRx {
            src: msg.src,
            dst: msg.dst,
            len: msg.len,
            buf: msg.buf,
        }
    }

    /// Gives a held buffer back to the peer (OpenAMP `rpmsg_release_rx_buffer`).
    pub fn release_rx(&mut self, held: HeldRx) -> Result<(), Error> {
        self.transport.release_rx(held.buf)?;
        self.held_rx -= 1;
        self.flush_unless_batched()?;
        Ok(())
    }

    // ----- the pull API ----------------------------------------------------------------
    // `next_event`, `decode` and `finish_rx` are marked #[inline]: they run once per message,
    // and a driver's loop over them (the hub's) measured about 5% slower per forwarded
    // message without it than the callback loop they replaced.

    /// Opens a round of [`next_event`](Self::next_event) calls: sends queued announcements,
    /// then batches (see [`begin_batch`](Self::begin_batch)) what is sent and released until
    /// [`end_poll`](Self::end_poll), which the caller owes exactly when this succeeds.
    pub fn begin_poll(&mut self) -> Result<(), Error> {
        self.flush_announcements()?;
        self.batches += 1;
        Ok(())
    }

    /// Closes a round opened by [`begin_poll`](Self::begin_poll): sends queued announcements
    /// and makes one notification decision for the round. Called after a failed
    /// `next_event` too, so that what went out before still gets its notification.
    pub fn end_poll(&mut self) -> Result<(), Error> {
        let announced = self.flush_announcements();
        self.batches = self.batches.saturating_sub(1);
        let notified = self.flush_unless_batched();
        announced.and(notified)
    }

    /// Takes the next buffer from the receive ring and says what it held, or `None` when the
    /// ring is empty. Binds and unbinds endpoints on name-service announcements and on a first
    /// message (see [`Config`](super::Config)) before returning them; gives back at once
    /// the buffers of announcements and of dropped input. Never calls anything of the caller.
    #[inline]
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        let Some(buf) = self.transport.take_rx()? else {
            return Ok(None);
        };
        let event = self.decode(buf)?;
        if !matches!(event, Event::Message(_)) {
            // A returned buffer counts towards the batch as a send does.
            self.flush_unless_batched()?;
        }
        Ok(Some(event))
    }

    /// Ends the delivery of a message from [`next_event`](Self::next_event): gives its buffer
    /// back to the peer, unless [`hold_rx`](Self::hold_rx) kept it.
    #[inline]
    pub fn finish_rx(&mut self, msg: Received) -> Result<(), Error> {
        if !msg.held {
            self.transport.release_rx(msg.buf)?;
        }
        // Returning the buffer counts too, even when nothing was sent in reply.
        self.flush_unless_batched()
    }

    #[inline]
    fn decode(&mut self, buf: Buffer) -> Result<Event, Error> {
        let mut raw = [0u8; HEADER_LEN];
        let header = if buf.len() as usize >= HEADER_LEN {
            buf.read(self.transport.memory(), 0, &mut raw)
                .ok()
                .map(|()| {
                    let h = RpmsgHeader::new_unchecked(&raw[..], self.endian());
                    (h.src(), h.dst(), h.len())
                })
        } else {
            None
        };
        let Some((src, dst, len)) =
            header.filter(|&(_, _, len)| HEADER_LEN + len as usize <= buf.len() as usize)
        else {
            let claimed = RpmsgHeader::new_unchecked(&raw[..], self.endian()).len();
            return self.drop_rx(
                buf,
                Dropped::Malformed {
                    buffer_len: buf.len(),
                    claimed,
                },
            );
        };

        if dst == NS_ADDR && self.config.name_service {
            if len as usize != NS_MSG_LEN {
                return self.drop_rx(buf, Dropped::BadNameService);
            }
            let mut bytes = [0u8; NS_MSG_LEN];
            buf.read(self.transport.memory(), HEADER_LEN, &mut bytes)?;
            self.transport.release_rx(buf)?;
            return Ok(match NameServiceMsg::parse(&bytes, self.endian()) {
                Ok(msg) => Event::NameService(self.apply_ns(msg)),
                Err(_) => {
                    self.stats.dropped += 1;
                    Event::Dropped(Dropped::BadNameService)
                }
            });
        }

        let Some(ept) = self.endpoint_by_addr(dst) else {
            return self.drop_rx(buf, Dropped::NoEndpoint { src, dst });
        };
        if self.config.bind_on_first_message
            && let Ok(e) = self.slot_mut(ept)
            && e.dest == ADDR_ANY
        {
            e.dest = src;
        }
        self.stats.received += 1;
        Ok(Event::Message(Received {
            ept,
            src,
            dst,
            len,
            buf,
            held: false,
        }))
    }

    fn drop_rx(&mut self, buf: Buffer, why: Dropped) -> Result<Event, Error> {
        self.stats.dropped += 1;
        self.transport.release_rx(buf)?;
        Ok(Event::Dropped(why))
    }

    /// Binds (on create) or unbinds (on destroy) the local endpoint an announcement names.
    fn apply_ns(&mut self, msg: NameServiceMsg) -> NameService {
        let candidates: Vec<EptId> = self.endpoints_named(msg.name()).collect();
        let created = matches!(msg.flags, NsFlags::Create);
        let ept = if created {
            let bound = candidates.into_iter().find(|&id| {
                self.endpoint(id)
                    .is_some_and(|e| e.dest == ADDR_ANY || e.dest == msg.addr)
            });
            if let Some(id) = bound {
                let _ = self.set_dest(id, msg.addr);
            }
            bound
        } else {
            let unbound = candidates
                .into_iter()
                .find(|&id| self.endpoint(id).is_some_and(|e| e.dest == msg.addr));
            if let Some(id) = unbound {
                let _ = self.set_dest(id, ADDR_ANY);
            }
            unbound
        };
        let mut name = [0u8; NS_NAME_LEN];
        let n = msg.name().len().min(NS_NAME_LEN);
        name[..n].copy_from_slice(&msg.name()[..n]);
        NameService {
            name,
            name_len: n as u8,
            addr: msg.addr,
            created,
            ept,
        }
    }

    // ----- the callback layer ----------------------------------------------------------

    /// Processes every message waiting, delivering them to `handler`, then sends queued
    /// announcements. Returns the number of buffers processed.
    pub fn poll<H: Handler<T>>(&mut self, handler: &mut H) -> Result<usize, Error> {
        self.poll_budget(handler, usize::MAX)
    }

    /// [`poll`](Self::poll), processing at most `budget` buffers: a peer that reposts its
    /// ring as fast as it is read cannot keep one call going. When it returns `budget`, more
    /// may be waiting: the caller polls again later (the peer does not kick for those).
    ///
    /// A round of the pull API: [`begin_poll`](Self::begin_poll), then each
    /// [`next_event`](Self::next_event) handed to [`deliver`](Self::deliver), then
    /// [`end_poll`](Self::end_poll).
    pub fn poll_budget<H: Handler<T>>(
        &mut self,
        handler: &mut H,
        budget: usize,
    ) -> Result<usize, Error> {
        self.begin_poll()?;
        let mut count = 0;
        let delivered = (|| {
            while count < budget
                && let Some(event) = self.next_event()?
            {
                count += 1;
                self.deliver(event, handler)?;
            }
            Ok(())
        })();
        let ended = self.end_poll();
        delivered.and(ended).map(|()| count)
    }

    /// Hands one event from [`next_event`](Self::next_event) to `handler`, and ends its
    /// delivery ([`finish_rx`](Self::finish_rx)) when the handler returns.
    pub fn deliver<H: Handler<T>>(&mut self, event: Event, handler: &mut H) -> Result<(), Error> {
        match event {
            Event::Message(mut msg) => {
                handler.on_message(self, &mut msg);
                self.finish_rx(msg)
            }
            Event::NameService(ns) => {
                handler.on_name_service(self, ns.event());
                Ok(())
            }
            Event::Dropped(why) => {
                handler.on_dropped(why);
                Ok(())
            }
        }
    }
}

fn read_payload<T: Transport>(
    transport: &T,
    buf: &Buffer,
    len: u16,
    offset: usize,
    out: &mut [u8],
) -> Result<(), Error> {
    let end = offset.saturating_add(out.len());
    if end > len as usize {
        return Err(Error::TooLarge {
            len: end,
            max: len as usize,
        });
    }
    buf.read(transport.memory(), HEADER_LEN + offset, out)?;
    Ok(())
}
