"""msgpack encoding of events and batch records (the wire format other languages follow).

An event is the msgpack array ``[id, source, emitted_at_ms, payload]``. A batch record stores
its events as the plain concatenation of those encodings, so Lua can build it with
``table.concat`` and never has to parse msgpack.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import msgpack

from .errors import PayloadError
from .errors import short as _short
from .keys import split_member
from .models import Batch, Event

_local = threading.local()


def _default(obj: Any) -> Any:
    """Strict types: anything but the exact JSON-like types comes here, is converted, and marks
    the call as needing the decode check (a tuple may have been a map key)."""
    _local.unusual = True
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, list | tuple):
        return list(obj)
    if isinstance(obj, str):  # subclasses (str and int enums, ...) as their base value
        return str.__str__(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


def _packer() -> msgpack.Packer:
    """One per thread: a Packer with a Python `default` is not safe to share between threads."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True, datetime=False, strict_types=True,
                                                default=_default)
    return packer


DEEP_BYTES = 1000
"""An event this long or longer may nest deeper than msgpack unpacks (1,024 containers, each at
least a byte, with the envelope and payload: msgpack packs a level more than it unpacks), so
its round trip is checked; a shorter one cannot."""


def encode_plain(event_id: str, source: str, emitted_at_ms: int, payload: dict[str, Any]) -> bytes | None:
    """One event whose payload holds only the exact JSON-like types (the single emit's common
    case), packed without a Python `default`: such an encoding always decodes, so it needs no
    check. None for anything else: the general path (`encode_events`) converts or names it."""
    packer = getattr(_local, "plain", None)
    if packer is None:
        packer = _local.plain = msgpack.Packer(use_bin_type=True, datetime=False, strict_types=True)
    try:
        data: bytes = packer.pack([event_id, source, emitted_at_ms, payload])
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
        packer.reset()
        return None
    if len(data) >= DEEP_BYTES:
        try:
            _unpack(data, raw=False, strict_map_key=False)
        except (TypeError, ValueError, msgpack.UnpackException):
            return None  # the general path names it
    return data


def begin() -> None:
    """Start a call's encoding: `unusual()` then says whether any payload needed `_default`."""
    _local.unusual = False


def unusual() -> bool:
    return bool(getattr(_local, "unusual", True))


_unpack = msgpack.unpackb


def encode_event(event_id: str, source: str, emitted_at_ms: int, payload: object, limit: int) -> bytes:
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise PayloadError(
            "payload_type", f"payload={_short(payload)} must be a mapping, not {type(payload).__name__}"
        )
    try:
        data: bytes = _packer().pack([event_id, source, emitted_at_ms, payload])
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError) as exc:
        where = _culprit(payload)
        what = f"payload field {where[0]}={_short(where[1])}" if where else f"payload={_short(payload)}"
        raise PayloadError("payload_unencodable", f"{what} cannot be msgpack-encoded: {exc}") from exc
    if len(data) > limit:
        raise PayloadError(
            "payload_too_large",
            f"event encodes to {len(data)} bytes (the payload and its envelope: id, source, "
            f"time), above the limit of {limit} bytes (Batcher max_payload_bytes; distbatch "
            f"serve --max-event-bytes)",
        )
    return data


def _culprit(payload: object) -> tuple[str, object] | None:
    """The first value (or map key) of `payload` that does not pack, in document order, and its
    path (`order.lines[2].when`): a payload's repr, cut short, named neither. None when each
    packs alone (the whole is too deep, say)."""
    pack = msgpack.Packer(use_bin_type=True, datetime=False, strict_types=True, default=_default).pack
    stack: list[tuple[object, str]] = [(payload, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, Mapping):
            items = []
            for k, v in node.items():
                at = f"{path}.{k}" if path else str(k)
                try:
                    pack(k)
                except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
                    return f"{at} (its key)", k
                items.append((v, at))
            stack.extend(reversed(items))
        elif isinstance(node, list | tuple):
            stack.extend(reversed([(v, f"{path}[{i}]") for i, v in enumerate(node)]))
        elif path:
            try:
                pack(node)
            except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
                return path, node
    return None


ONLY_DICTS = {dict}
"""`{*map(type, payloads)} == ONLY_DICTS`: every payload a plain dict, checked in C."""


def event_id(prefix: str, number: int, width: int = 0) -> str:
    """``<prefix>-<number in hex>``, zero-padded to `width` digits (`encode_events`)."""
    return f"{prefix}-{number:0{width}x}"


def encode_events(ids: Iterator[int], prefix: str, source: str, emitted_at_ms: int,
                  payloads: Sequence[object], limit: int, only_dicts: bool | None = None) -> list[bytes]:
    """`encode_event` for a whole call (emit_many's hot path). The common case, plain dicts that
    pack and fit, runs in C from end to end: the envelope ``[id, source, time`` is a bytes
    template with the id's digits left open, and each event is that template's bytes followed
    by its packed payload, the same bytes as packing the envelope whole. So that every id of
    the call packs to one length, each is zero-padded to the digits of the call's last (largest:
    the counter only grows). Ids stay unique: each number is taken once, and a padded id never
    equals an unpadded one (unpadded, only "0" starts with a zero). Anything else takes the
    loop, with the same ids, and `encode_event` names the payload at fault (`.event`: its index).
    `only_dicts`: the caller's `{*map(type, payloads)} == ONLY_DICTS`, when it has it already."""
    pack = _packer().pack
    width = 0
    if len(payloads) > 1 and (only_dicts if only_dicts is not None else {*map(type, payloads)} == ONLY_DICTS):
        numbers = list(islice(ids, len(payloads)))
        width = len(f"{numbers[-1]:x}")
        head = pack(event_id(prefix, 0, width))[:-width].replace(b"%", b"%%")
        tail = (pack(source) + pack(emitted_at_ms)).replace(b"%", b"%%")
        # `%x` where every number of the call has `width` digits already (all but a call that
        # crosses a power of 16): bytes' `%` formats it in C's fast path, which a width skips.
        digits = b"%x" if numbers[0] >> (4 * width - 4) else b"%%0%dx" % width
        template = b"\x94" + head + digits + tail
        try:
            out = list(map(bytes.__add__, map(template.__mod__, numbers), map(pack, payloads)))
        except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
            pass  # the loop names it
        else:
            longest = max(map(len, out))
            if longest <= limit:
                if longest >= DEEP_BYTES:
                    _local.unusual = True  # its round trip is checked
                return out
        ids = iter(numbers)
    out = []
    append = out.append
    for i, p in enumerate(payloads):
        eid = event_id(prefix, next(ids), width)
        try:
            if type(p) is not dict:
                data = encode_event(eid, source, emitted_at_ms, p, limit)
            else:
                try:
                    data = pack([eid, source, emitted_at_ms, p])
                except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
                    data = encode_event(eid, source, emitted_at_ms, p, limit)  # raises, naming the cause
                if len(data) > limit:
                    data = encode_event(eid, source, emitted_at_ms, p, limit)
            if len(data) >= DEEP_BYTES:
                _local.unusual = True
        except PayloadError as exc:  # which one, found where it failed: in its real envelope
            exc.event = i
            raise
        append(data)
    return out


def check_round_trip(encoded: Sequence[bytes], payloads: Sequence[object]) -> None:
    """What cannot be decoded must never be stored: it would poison a whole batch (a tuple as a
    map key packs fine and never unpacks). One C-level pass over all of a call's events; only on
    failure is each one tried, to name it. Callers skip it when no payload of the call held
    anything but exact JSON-like types (`unusual()`): those always decode."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
    try:
        unpacker.feed(b"".join(encoded))
        for _ in unpacker:
            pass
        return
    except (TypeError, ValueError, msgpack.UnpackException):
        pass
    for i, data in enumerate(encoded):
        try:
            _unpack(data, raw=False, strict_map_key=False)
        except (TypeError, ValueError, msgpack.UnpackException) as exc:
            raise PayloadError(
                "payload_unencodable",
                f"event {i}: payload={_short(payloads[i])} does not survive msgpack decoding "
                f"({type(exc).__name__}: {exc}); use str map keys and JSON-like values; nothing was stored",
                event=i,
            ) from exc


def decode_events(blob: bytes, n: int | None = None) -> list[Event]:
    """A record's events; `n`: how many its cut took, where the caller knows it. An event array
    longer than the four fields of the wire format (an emitter of a later version, or another
    language's that added one) is read by its first four, so it does not make every event of its
    batch undecodable. What another language's emitter spoiled is refused, by name, rather than
    read as something else: a record that ends inside an event, a number of values other than `n`
    (an event cut short reads on into the next one, which then hides in its payload; an empty
    one, or two in one), a value that is no array (a map's four keys were read as its fields).
    Strings that are no UTF-8 (a JavaScript string holding half of a surrogate pair) come back
    with surrogate escapes, as partition keys do, instead of failing the batch."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(blob) or 1,
                                unicode_errors="surrogateescape")
    unpacker.feed(blob)
    if n is None:  # where each value ends: an incomplete one is left unread, yet `tell()` counts it
        objects, end = [], 0
        for o in unpacker:
            objects.append(o)
            end = unpacker.tell()
        if end != len(blob):
            raise ValueError(f"the record ends inside an event: its last {len(blob) - end} bytes are an "
                             "event cut short")
    else:  # one cut short reads on into the next, or is left out: fewer values than its cut took
        objects = list(unpacker)
        if len(objects) != n:
            raise ValueError(f"the record holds {len(objects)} msgpack values where its cut took {n} "
                             "events: an event of it is no single msgpack value (cut short, empty, or two "
                             "in one)")
    if objects and {*map(type, objects)} != _LISTS:
        kind = next(type(o).__name__ for o in objects if type(o) is not list)
        raise ValueError(f"an event of the record is a msgpack {kind}, not the array [id, source, "
                         "emitted_at_ms, payload]")
    try:
        return [Event(eid, source, payload, ts) for eid, source, ts, payload in objects]
    except ValueError:
        return [Event(o[0], o[1], o[3], o[2]) if len(o) > 4 else Event(*_four(o)) for o in objects]


_LISTS = {list}
UNDECODABLE = (ValueError, TypeError, msgpack.UnpackException)
"""What `decode_events` raises for a record it cannot read (a list as a map key: TypeError)."""


def _four(o: Any) -> tuple[Any, Any, Any, Any]:
    eid, source, ts, payload = o  # raises, naming what it found
    return eid, source, payload, ts


class LazyEvents(Sequence[Event]):
    """A batch's events, decoded on first use: a producer that only counts cuts never pays."""

    __slots__ = ("_blob", "_events")

    def __init__(self, blob: bytes) -> None:
        self._blob = blob
        self._events: list[Event] | None = None

    def _list(self) -> list[Event]:
        if self._events is None:
            self._events = decode_events(self._blob)
        return self._events

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self._list()[index]

    def __len__(self) -> int:
        return len(self._list())

    def stored(self) -> int | None:
        """How many events the record holds, without decoding them (a count to report must not
        fail on a record another language's emitter spoiled); None when it is no msgpack stream."""
        if self._events is not None:
            return len(self._events)
        unpacker = msgpack.Unpacker(max_buffer_size=len(self._blob) or 1)
        unpacker.feed(self._blob)
        n = 0
        try:
            while True:
                unpacker.skip()
                n += 1
        except msgpack.OutOfData:
            return n
        except (ValueError, msgpack.UnpackException):
            return None

    def __iter__(self) -> Iterator[Event]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(self._list())


def as_text(value: Any, errors: str = "strict") -> str:
    """redis-py types replies as bytes | str (and more); distbatch's clients return bytes.
    `errors="replace"` where the bytes may be a hostile writer's and must only be shown."""
    return value.decode(errors=errors) if isinstance(value, bytes) else str(value)


_text = as_text


def decode_batch(batch_id: str, info: Any, events: Any, attempt: Any) -> Batch:
    """A record's fields (rec:info, rec:events, rec:attempt) -> Batch."""
    member, reason, cut_ms, n = as_text(info).split("\n", 3)
    binding, partition = split_member(member)
    return Batch(
        id=batch_id,
        binding=binding,
        partition_key=partition,
        reason=reason,
        events=decode_events(events or b"", int(n) if n.isdigit() else None),
        discarded=False,
        attempt=int(attempt or 0),
        cut_at_ms=int(cut_ms),
    )


def decode_cut(row: list[Any]) -> Batch:
    """A batch as a script returns it: [id, member, reason, discarded, cut_ms, events, ...]."""
    batch_id, member, reason, discarded, cut_ms, blob = row[:6]
    binding, partition = split_member(_text(member))
    return Batch(
        id=_text(batch_id),
        binding=binding,
        partition_key=partition,
        reason=_text(reason),
        events=LazyEvents(blob),
        discarded=bool(int(discarded)),
        cut_at_ms=int(cut_ms),
    )
