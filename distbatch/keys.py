"""Every Redis key name distbatch uses, built here and nowhere else.

All keys of one namespace carry the hash tag ``{namespace}``, so every script touches a single
cluster slot, and nothing in a partition key can move a key to another slot: the tag is the first
``{...}`` of the name and the partition part comes after it, percent-encoded.

Buffer identity ("member") is ``<binding>|<segment>``: the binding key (``id@version``, a
restricted alphabet without ``|``) and the partition segment, ``*`` for the key-less buffer or
``=`` followed by the percent-encoded UTF-8 partition key. ``quote`` leaves only ``A-Za-z0-9_.-~``
unescaped, so the encoding is injective and ``*``, ``=``, ``|``, ``:``, ``{`` and ``}`` never
appear raw inside a segment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

KEYLESS = "*"
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch  # exactly what `quote` leaves as it is


def encode_partition(partition_key: str | None) -> str:
    """Partition key -> segment used in key names (injective; `None` is the key-less buffer)."""
    if partition_key is None:
        return KEYLESS
    if _UNRESERVED(partition_key):  # most keys: skip quote's encode/decode (cache misses at 1M keys)
        return "=" + partition_key
    return "=" + quote(partition_key, safe="", errors="surrogatepass")


def decode_partition(segment: str) -> str | None:
    if segment == KEYLESS:
        return None
    return unquote(segment[1:], errors="surrogatepass")


_MEMBER_CACHE_SIZE = 1 << 16
_members: dict[tuple[str, str | None], bytes] = {}


def member_bytes(binding: str, partition_key: str | None) -> bytes:
    """The hot path's member, cached: partition keys repeat, building a member is not free.

    A plain dict emptied when full, not an LRU: with more live keys than the cache holds
    (1M open buffers) an LRU misses anyway and its bookkeeping made each miss cost twice the
    member itself; emptying a dict costs nothing per call.
    """
    member = _members.get((binding, partition_key))
    if member is None:
        if len(_members) >= _MEMBER_CACHE_SIZE:
            _members.clear()
        member = f"{binding}|{encode_partition(partition_key)}".encode("utf-8", "surrogatepass")
        _members[binding, partition_key] = member
    return member


def split_member(member: str) -> tuple[str, str | None]:
    """`<binding>|<segment>` -> (binding, partition key)."""
    binding, _, segment = member.partition("|")
    return binding, decode_partition(segment)


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names of one namespace. Prefixes end where a script appends an id or a member."""

    namespace: str = "distbatch"

    def __post_init__(self) -> None:
        if not _NAMESPACE.fullmatch(self.namespace):
            from .errors import ConfigError

            raise ConfigError(
                "namespace_invalid",
                f"namespace={self.namespace!r} must be 1-64 characters of A-Z a-z 0-9 _ . -",
            )

    @property
    def base(self) -> str:
        return "{" + self.namespace + "}"

    # registry
    @property
    def bindings(self) -> str:
        """Hash: binding key -> JSON definition."""
        return f"{self.base}:bindings"

    @property
    def registry_version(self) -> str:
        """Random epoch set on every register/drop, so cached bindings can be checked in-script."""
        return f"{self.base}:regver"

    @property
    def dropped(self) -> str:
        """Hash: binding key -> definition of a dropped binding, for batches it cut before."""
        return f"{self.base}:dropped"

    def call(self, emitter: str) -> str:
        """String: the last accumulate call id of one emitter, so a retried call runs once."""
        return f"{self.base}:call:{emitter}"

    # buffers and windows
    @property
    def buffer_prefix(self) -> str:
        """List per open buffer: ``buffer_prefix + member`` holds msgpack-encoded events."""
        return f"{self.base}:buf:"

    def buffer(self, binding: str, partition_key: str | None) -> str:
        return self.buffer_prefix + self.member(binding, partition_key)

    @staticmethod
    def member(binding: str, partition_key: str | None) -> str:
        return f"{binding}|{encode_partition(partition_key)}"

    @property
    def deadlines(self) -> str:
        """Sorted set: member -> window deadline (ms); one entry per open buffer."""
        return f"{self.base}:deadlines"

    @property
    def open_prefix(self) -> str:
        """Set per binding of its open members, so `drop` never scans other bindings."""
        return f"{self.base}:open:"

    def open_buffers(self, binding: str) -> str:
        return self.open_prefix + binding

    @property
    def wake(self) -> str:
        """Pub/sub channel: accumulate publishes a new earliest deadline; sweepers listen."""
        return f"{self.base}:wake"

    # batches
    @property
    def batch_seq(self) -> str:
        return f"{self.base}:batchseq"

    @property
    def batch_prefix(self) -> str:
        """Hash per cut batch: ``batch_prefix + batch_id``."""
        return f"{self.base}:batch:"

    def batch(self, batch_id: str) -> str:
        return self.batch_prefix + batch_id

    @property
    def ready(self) -> str:
        """Sorted set: batch id -> the id as a number; workers claim the lowest (oldest) first."""
        return f"{self.base}:ready"

    @property
    def delayed(self) -> str:
        """Sorted set: batch id -> when its retry backoff ends (ms, server time)."""
        return f"{self.base}:delayed"

    @property
    def running(self) -> str:
        """Sorted set: batch id -> lease deadline (ms) of the worker running it."""
        return f"{self.base}:running"

    @property
    def dead(self) -> str:
        """Sorted set: batch id -> when it ran out of attempts (ms)."""
        return f"{self.base}:dead"

    @property
    def stats(self) -> str:
        """Hash of counters: ``<counter>:<binding>`` -> int."""
        return f"{self.base}:stats"

    @property
    def queue_name(self) -> str:
        """RQ queue the workers of this namespace listen on."""
        return f"distbatch-{self.namespace}"
