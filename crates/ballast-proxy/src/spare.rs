//! Read buffers that plain-text client connections take for their first bytes and hand back
//! while they wait for their next request, and that tunnels ([`crate::relay`]) hold only while
//! bytes are in flight.
//!
//! A keep-alive connection spends most of its life idle; a 16 KiB read buffer held through that
//! wait is most of what an idle connection costs (nginx frees its header buffer the same way
//! between requests). Each worker keeps a few spare buffers, so a busy connection takes one
//! back without a trip to the allocator, and a burst's buffers beyond them are freed.

use std::cell::RefCell;

use bytes::BytesMut;

/// What one read asks room for: a whole request head, usually.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// Spare buffers one worker keeps at most (1 MiB).
const KEPT: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for a read: a spare one, or a new one.
pub(crate) fn take() -> BytesMut {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
}

/// Hands back an empty `buffer` for another connection (freed if enough are kept, or if it is
/// not one whole buffer of its own).
pub(crate) fn give_back(mut buffer: BytesMut) {
    buffer.clear();
    // `try_reclaim` is true only for a buffer that alone owns an allocation this large.
    if buffer.try_reclaim(READ_CHUNK) {
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < KEPT {
                spare.push(buffer);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> usize {
        SPARE.with_borrow(Vec::len)
    }

    #[test]
    fn a_worker_keeps_whole_buffers_up_to_its_bound_and_hands_them_out_empty() {
        let mut used = take();
        used.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        give_back(used);
        assert_eq!(kept(), 1);
        let again = take();
        assert!(again.is_empty() && again.capacity() >= READ_CHUNK);
        assert_eq!(kept(), 0);

        // A buffer that shares its allocation with bytes still in use is not kept.
        let mut shared = again;
        shared.extend_from_slice(b"head");
        let head = shared.split().freeze();
        give_back(shared);
        assert_eq!(kept(), 0);
        drop(head);

        for _ in 0..KEPT + 10 {
            give_back(BytesMut::with_capacity(READ_CHUNK));
        }
        assert_eq!(kept(), KEPT);
    }
}
