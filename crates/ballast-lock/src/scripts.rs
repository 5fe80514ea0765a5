//! The Lua scripts that make each step atomic on one node. A lock is the key `NAME` holding the
//! holder's random value with a TTL; beside it, `NAME:fence` holds the last fencing token issued.
//!
//! A fencing token is `max(last + 1, the node's clock in µs)`: it grows by one per grant like a
//! counter, and a node that lost its counter (restarted without persistence) still issues tokens
//! beyond the ones it issued before, as long as its clock moved forward.
//!
//! Tokens must grow in grant order across nodes too, and the nodes' counters can disagree (a
//! node whose clock ran fast issues much larger ones). So a grant is complete only once a
//! majority's counters were raised to the token chosen (`RAISE`, one more parallel round trip):
//! every later majority shares a node with that one, and that node issues a larger token.
//! Release and extension raise the counter again, which only ever helps.

use std::sync::LazyLock;

use redis::Script;

/// `SET NAME VALUE NX PX TTL` and, when that succeeded, the next fencing token; 0 when someone
/// else holds the lock.
const ACQUIRE_SOURCE: &str = r"
        if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
            return 0
        end
        local now = redis.call('TIME')
        local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
        local token = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
        if token < clock then token = clock end
        redis.call('SET', KEYS[2], string.format('%.0f', token))
        return token
        ";
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_SOURCE));

/// Deletes the lock only if it still holds our value (compare-and-delete); 1 if it did.
const RELEASE_SOURCE: &str = r"
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then
            return 0
        end
        redis.call('DEL', KEYS[1])
        local token = tonumber(ARGV[2])
        if tonumber(redis.call('GET', KEYS[2]) or '0') < token then
            redis.call('SET', KEYS[2], ARGV[2])
        end
        return 1
        ";
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_SOURCE));

/// Sets a new TTL only if the lock still holds our value (compare-and-pexpire); 1 if it did.
const EXTEND_SOURCE: &str = r"
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then
            return 0
        end
        redis.call('PEXPIRE', KEYS[1], ARGV[3])
        local token = tonumber(ARGV[2])
        if tonumber(redis.call('GET', KEYS[2]) or '0') < token then
            redis.call('SET', KEYS[2], ARGV[2])
        end
        return 1
        ";
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(EXTEND_SOURCE));

/// Raises the fencing counter to `ARGV[1]` unless it is already there; answers the counter.
/// Raising a counter is safe whoever holds the lock: it only makes later tokens larger.
const RAISE_SOURCE: &str = r"
        local token = tonumber(ARGV[1])
        local last = tonumber(redis.call('GET', KEYS[2]) or '0')
        if last < token then
            redis.call('SET', KEYS[2], ARGV[1])
            return token
        end
        return last
        ";
pub(crate) static RAISE: LazyLock<Script> = LazyLock::new(|| Script::new(RAISE_SOURCE));

/// The holder's value (or false), its remaining TTL in ms, and the last fencing token.
const INSPECT_SOURCE: &str = r"
        return {
            redis.call('GET', KEYS[1]),
            redis.call('PTTL', KEYS[1]),
            redis.call('GET', KEYS[2]) or '0',
        }
        ";
pub(crate) static INSPECT: LazyLock<Script> = LazyLock::new(|| Script::new(INSPECT_SOURCE));

/// Every script's source, loaded into each node as its connection opens: a request queued on a
/// node that does not answer (paused, busy) must run when it wakes, without the round trips of
/// loading a script it does not know.
pub(crate) const ALL: [&str; 5] = [
    ACQUIRE_SOURCE,
    RAISE_SOURCE,
    RELEASE_SOURCE,
    EXTEND_SOURCE,
    INSPECT_SOURCE,
];
