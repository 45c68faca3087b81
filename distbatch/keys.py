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

import contextlib
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

KEYLESS = "*"
SEEN_LIVE_MS = 30_000
"""A sweeper or worker whose last heartbeat (`Keys.sweepers`, `Keys.workers`) is older is gone,
for `stats`, `/metrics` and `/healthz` alike (they said 10 s and 30 s, and disagreed for 20 s
after a sweeper stopped). A worker beats every 5 s, a sweeper every pass (at most 1 s apart)."""
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
    """A segment's partition key. Bytes that are no UTF-8 (another language's emitter that
    percent-encoded Latin-1) come back as surrogate escapes, as `os.fsdecode` gives them: a batch
    of such a buffer still runs and shows, instead of failing every reader of its key."""
    if segment == KEYLESS:
        return None
    try:
        return unquote(segment[1:], errors="surrogatepass")
    except UnicodeDecodeError:
        return unquote(segment[1:], errors="surrogateescape")


MEMBER_CACHE_SIZE = 1 << 16
MEMBER_KEY_LENGTH = 256
"""Longer partition keys are not cached: the cache is bounded in entries, and 65,536 keys of a
megabyte each (an HTTP client's) would have stayed in the process for good."""
MEMBER_CACHE_BINDINGS = 64
"""Bindings whose caches a process keeps, the least recently used dropped past it: a cache per
binding ever emitted to (every version of a long-running producer's or `serve`'s) stayed for
good, up to ~40 MB each (a review measured 161 MB after four bindings, all dropped). Room for a
source's many bindings: an `emit_many` to more than this many in turn rebuilds every member
(at 16, a source of 24 bindings took 20% longer)."""
MEMBER_CACHE_TOTAL = 4 * MEMBER_CACHE_SIZE
"""What the caches hold together, about: each binding's takes new keys up to its share
(`member_cap`), so 64 full caches are not 64 x 40 MB (2.6 GB in the second review's run)."""
_members: dict[str, dict[str | None, bytes]] = {}  # binding -> partition key -> member bytes
_full_misses = 0


def member(binding: str, partition_key: str | None) -> str:
    """A buffer's identity: ``<binding>|<segment>`` (the one place it is built; Lua only splits it)."""
    return f"{binding}|{encode_partition(partition_key)}"


def member_cap() -> int:
    """How many keys a binding's cache takes now: all of `MEMBER_CACHE_SIZE` for a few bindings,
    a share of `MEMBER_CACHE_TOTAL` for many (at least 4,096). A cache above it (filled before
    others came) takes no more."""
    return min(MEMBER_CACHE_SIZE, max(4096, MEMBER_CACHE_TOTAL // max(1, len(_members))))


def member_bytes(binding: str, partition_key: str | None) -> bytes:
    """A buffer's member as bytes, through the binding's cache (`members_cache`): what the emit
    path does, inlined there."""
    per = members_cache(binding)
    cached = per.get(partition_key)
    if cached is None:
        cached = build_member(binding, partition_key)
        if len(per) >= member_cap():
            full_misses(per, 1)
        elif partition_key is None or len(partition_key) <= MEMBER_KEY_LENGTH:
            per[partition_key] = cached
    return cached


def build_member(binding: str, partition_key: str | None) -> bytes:
    """`member` as bytes; the common key (letters and digits) is one concatenation and encode."""
    if partition_key is not None and partition_key.isascii() and partition_key.isalnum():
        return (binding + "|=" + partition_key).encode()
    return member(binding, partition_key).encode("utf-8", "surrogatepass")


def full_misses(per: dict[str | None, bytes], n: int) -> None:
    """`n` members were built that a full cache could not take.

    A full cache takes no more keys (the emit path stops even looking in it) and is emptied only
    after 16x its size such misses: with more live keys than it holds (1M open buffers) every
    insert and refill would be wasted work (an LRU misses there too, and its bookkeeping made
    each miss cost twice the member itself), while a key set that drifts still gets a fresh
    cache now and then.
    """
    global _full_misses
    _full_misses += n
    if _full_misses >= 16 * MEMBER_CACHE_SIZE:
        per.clear()
        _full_misses = 0


def members_cache(binding: str) -> dict[str | None, bytes]:
    """`member_bytes`' cache for one binding, for a caller that inlines the hit (read it, never
    write it)."""
    per = _members.pop(binding, None)  # and put back last: the least recently used goes first
    if per is None:
        per = {}
        if len(_members) >= MEMBER_CACHE_BINDINGS:
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # another thread's
                del _members[next(iter(_members))]  # meanwhile: a miss, no more
    _members[binding] = per
    return per


def split_member(member: str) -> tuple[str, str | None]:
    """`<binding>|<segment>` -> (binding, partition key)."""
    binding, _, segment = member.partition("|")
    return binding, decode_partition(segment)


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names of one shard of a namespace. Prefixes end where a member or binding follows.

    Every key of a shard starts with the shard's hash tag (``{ns}`` for a one-shard namespace,
    ``{ns:<shard>:<n>}`` otherwise, see `shards.py`), so each script touches one cluster slot.
    Namespace-wide keys (`meta`, `sweepers`) live on the ``{ns}`` tag.
    """

    namespace: str = "distbatch"
    shard: int = 0
    tag: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not _NAMESPACE.fullmatch(self.namespace):
            from .errors import ConfigError

            raise ConfigError(
                "namespace_invalid",
                f"namespace={self.namespace!r} must be 1-64 characters of A-Z a-z 0-9 _ . -",
            )
        if not self.tag:
            object.__setattr__(self, "tag", "{" + self.namespace + "}")

    @property
    def base(self) -> str:
        return self.tag

    # namespace-wide (on the {ns} tag)
    @property
    def meta(self) -> str:
        """Hash: `shards` (how many) and `tags` (JSON list): fixed when the namespace is first used."""
        return "{" + self.namespace + "}:meta"

    @property
    def workers(self) -> str:
        """Sorted set: worker id -> last heartbeat (ms, server clock), for health checks: unlike
        RQ's worker registry, rebuilt by the next heartbeat after Redis lost its data."""
        return "{" + self.namespace + "}:workers"

    @property
    def sweepers(self) -> str:
        """Sorted set: sweeper id -> last heartbeat (ms), so sweepers share the shards out."""
        return "{" + self.namespace + "}:sweepers"

    @property
    def lateness(self) -> str:
        """List, newest first, capped: "<server ms> <late ms>" per window a sweeper cut (the
        dashboard's lateness chart)."""
        return "{" + self.namespace + "}:lateness"

    def request(self, digest: str) -> str:
        """String (TTL): what the HTTP ingest request sent with an `Idempotency-Key` (its SHA-256)
        came to (its response), so a retry of it gets that response instead of storing its
        events again."""
        return "{" + self.namespace + "}:request:" + digest

    @property
    def queue_name(self) -> str:
        """RQ queue the workers of this namespace listen on."""
        return f"distbatch-{self.namespace}"

    # registry (a copy per shard, so every script reads it from its own slot)
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

    def done(self, token: str) -> str:
        """String (1 min TTL): this claim completed its batch, so a resent complete knows it was
        its own, and a paused worker's late complete knows it was not."""
        return f"{self.base}:done:{token}"

    @property
    def bell(self) -> str:
        """List: a token per batch made ready (at most 8 kept; a claim that leaves none ready
        deletes them): a worker lingering for batches blocks on it instead of polling
        (`Records.wait_and_claim`)."""
        return f"{self.base}:bell"

    def kept(self, call_id: str) -> str:
        """List (1 min TTL): the reply of a call that removed what it reports (a drop's drain, a
        flush), so that a resend after a lost reply returns it instead of an empty one."""
        return f"{self.base}:kept:{call_id}"

    @property
    def lease(self) -> str:
        """String: the sweeper that owns this shard for now (SET PX)."""
        return f"{self.base}:sweeper"

    # buffers and windows
    @property
    def buffer_prefix(self) -> str:
        """List per open buffer: ``buffer_prefix + member`` holds msgpack-encoded events."""
        return f"{self.base}:buf:"

    def buffer(self, binding: str, partition_key: str | None) -> str:
        return self.buffer_prefix + member(binding, partition_key)

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

    # batches: a record is one field (the batch id) in each of the rec:* hashes of its shard,
    # so every script names all its keys up front (Redis Cluster needs it while slots move)
    @property
    def batch_seq(self) -> str:
        return f"{self.base}:batchseq"

    @property
    def rec_events(self) -> str:
        """Hash: batch id -> its events (concatenated msgpack)."""
        return f"{self.base}:rec:events"

    @property
    def rec_info(self) -> str:
        """Hash: batch id -> ``member\\nreason\\ncut_ms\\nn``."""
        return f"{self.base}:rec:info"

    @property
    def rec_attempt(self) -> str:
        """Hash: batch id -> tries so far."""
        return f"{self.base}:rec:attempt"

    @property
    def rec_owner(self) -> str:
        """Hash: batch id -> token of the claim running it."""
        return f"{self.base}:rec:owner"

    @property
    def rec_tokens(self) -> str:
        """Hash: claim token -> batch id (a retried claim finds its own claim again)."""
        return f"{self.base}:rec:tokens"

    @property
    def rec_error(self) -> str:
        """Hash: batch id -> ``failed_ms\\nfailed_by\\noutcome\\nerror text`` of its last failure."""
        return f"{self.base}:rec:error"

    @property
    def cut(self) -> list[str]:
        """The keys a cut writes (see lua/includes/cut_keys.lua)."""
        return [self.ready, self.stats, self.rec_events, self.rec_info, self.rec_attempt]

    @property
    def typed(self) -> list[tuple[str, str]]:
        """This shard's keys a worker reads, each with the type distbatch keeps there."""
        return [(self.ready, "zset"), (self.running, "zset"), (self.delayed, "zset"), (self.dead, "zset"),
                (self.stats, "hash"), (self.rec_events, "hash"), (self.rec_info, "hash"),
                (self.rec_attempt, "hash"), (self.rec_owner, "hash"), (self.rec_tokens, "hash"),
                (self.rec_error, "hash"), (self.deadlines, "zset"), (self.bindings, "hash"),
                (self.bell, "list"), (self.batch_seq, "string"), (self.registry_version, "string")]

    @property
    def namespace_typed(self) -> list[tuple[str, str]]:
        """The namespace-wide keys (on the `{ns}` tag), each with the type distbatch keeps there."""
        return [(self.meta, "hash"), (self.workers, "zset"), (self.sweepers, "zset"), (self.lateness, "list")]

    @property
    def lifecycle(self) -> list[str]:
        """The 11 keys every lifecycle script takes first (see lua/includes/lifecycle.lua)."""
        return [self.ready, self.running, self.delayed, self.dead, self.stats, self.rec_events,
                self.rec_info, self.rec_attempt, self.rec_owner, self.rec_tokens, self.rec_error]

    @property
    def ready(self) -> str:
        """Sorted set: batch id -> its sequence number; workers claim the lowest (oldest) first."""
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
