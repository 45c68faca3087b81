"""The script call of a single emit (`accumulate_one.lua`), packed once per thread and binding.

Of its 26 keys and arguments only five change from one emit to the next (the buffer key, the
window clock, the call id, the event, whether the call key keeps its TTL), and the script takes
them last. So the rest is packed into RESP bytes once per emitting thread, binding and registry
epoch, and a call is one bytes formatting instead of two dozen arguments converted and packed.
A single emit is where per-call Python shows against the round trip: `Single` keeps, per thread
and source, what its emits share, down to each partition key's buffer key, packed, and the
result an emit that only stored returns (`Batcher.emit`). Clients that cannot take packed bytes
(Redis Cluster, asyncio) get the same call as lists (`OneCall`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .keys import member_bytes
from .models import EmitResult
from .ops import Call
from .registry import Route, Snapshot

KNOWN_KEYS = 1 << 14
"""Partition keys kept packed per source (for all threads); past that, the others take the
planned path."""
KNOWN_KEY_LENGTH = 256
"""Longer partition keys are not kept (nor is a key whose payload failed before its call)."""
_KEEP, _SET = b"$2\r\n1c\r\n", b"$1\r\nc\r\n"
"""The last argument: keep the call key's TTL ('1') or not, and 'c': the call was built by this
client, which checked what the script would check for a caller in another language."""


def _resp(args: list[Any]) -> bytes:
    """RESP bulk strings, as redis-py and hiredis pack them (str as UTF-8, int in decimal)."""
    out = []
    for a in args:
        b = a.encode() if isinstance(a, str) else b"%d" % a if isinstance(a, int) else bytes(a)
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


class OneHead(NamedTuple):
    """What every single-emit call of one thread to one binding shares, for one registry epoch."""

    route: Route
    epoch: bytes
    keys: list[Any]
    """Every key but the buffer key (the last one)."""
    args: list[Any]
    """Every argument but the last four: window clock, call id, event, keep the TTL."""
    prefix: bytes
    """RESP: the array header, EVALSHA, its SHA, the key count and `keys`."""
    middle: bytes
    """RESP: `args`."""


def one_head(route: Route, epoch: bytes, keys: list[Any], args: list[Any], sha: str) -> OneHead:
    n = 3 + len(keys) + 1 + len(args) + 4
    prefix = b"*%d\r\n" % n + _resp(["EVALSHA", sha, len(keys) + 1, *keys])
    return OneHead(route, epoch, keys, args, prefix, _resp(args))


def pack(head: OneHead, key_bulk: bytes, window_now: bytes, call_id: int, event: bytes,
         keep_ttl: bool) -> bytes:
    """The whole EVALSHA command; `key_bulk` is the buffer key as a RESP bulk string."""
    cid = b"%d" % call_id
    return b"%b%b%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n%b" % (
        head.prefix, key_bulk, head.middle, len(window_now), window_now, len(cid), cid, len(event), event,
        _KEEP if keep_ttl else _SET)


class OneCall(NamedTuple):
    head: OneHead
    buffer_key: bytes
    window_now: bytes
    call_id: int
    event: bytes
    keep_ttl: bool = False
    """The emitter's call key keeps its TTL (`transport.Emitter`), else it is set again."""

    def lists(self) -> Call:
        h = self.head
        return [*h.keys, self.buffer_key], [*h.args, self.window_now, self.call_id, self.event,
                                             b"1c" if self.keep_ttl else b"c"]


Known = tuple[bytes, EmitResult, bytes]
"""Per partition key: the buffer key as a RESP bulk, the result of an emit that only stored, the
buffer's member."""


class Single:
    """One thread's single emits to one source while the registry snapshot stays the same (one
    binding, one shard, a sync client on one Redis): its call's head (its call key is the
    thread's own), and what each partition key seen needs (`known`, shared by the threads,
    at most `KNOWN_KEYS`)."""

    __slots__ = ("buffer_prefix", "field", "head", "keyed", "known", "quick_len", "snapshot")

    def __init__(self, snapshot: Snapshot, head: OneHead, buffer_prefix: bytes, quick_len: int,
                 known: dict[str | None, Known]) -> None:
        self.snapshot = snapshot
        self.head = head
        path = head.route.path
        self.keyed = path is not None
        self.field = path[0] if path is not None else None  # `Ingest.single` takes one-field paths only
        self.quick_len = quick_len
        """The reply's length when it says only "stored": the server's time, then the ticket
        queue's length when the call passes the queue."""
        self.buffer_prefix = buffer_prefix
        self.known = known

    def learnable(self, pkey: Any) -> bool:
        """A plain partition key (a str of at most `KNOWN_KEY_LENGTH`, or none for a key-less
        binding), with room left for it; any other key takes the planned path, which reads it
        (or says what is wrong with it)."""
        plain = type(pkey) is str and len(pkey) <= KNOWN_KEY_LENGTH if self.keyed else pkey is None
        return plain and len(self.known) < KNOWN_KEYS

    def learn(self, pkey: str | None) -> Known:
        """`known[pkey]` for a `learnable` key: made, and kept (threads racing here make equal
        entries; the dict may pass its bound by as many)."""
        route = self.head.route
        member = member_bytes(route.key, pkey)
        key = self.buffer_prefix + member
        known = self.known[pkey] = (b"$%d\r\n%b\r\n" % (len(key), key),
                                    tuple.__new__(EmitResult, (route.key, pkey, None, 0, None, 0)), member)
        return known

    def lists(self, known: Known, window_now: bytes, call_id: int, event: bytes, keep_ttl: bool) -> Call:
        """The packed call's keys and arguments (to send it as EVAL where Redis lacks the script)."""
        return OneCall(self.head, self.buffer_prefix + known[2], window_now, call_id, event, keep_ttl).lists()
