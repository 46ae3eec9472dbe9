"""Large token-id fields read on the wire, without decoding them.

Decoding a 50 MB request of token ids with protobuf takes ~300 ms with the GIL held (the ids
become a repeated field, then Python ints), so every other call on the event loop, health checks
included, waited behind it, and a request refused as too long had paid all of it first.

For a large request, ``strip`` walks the message's wire format down to every ``TokenIds`` that
the engine reads as caller-given ids (Encode's and Reward's inputs, Score's query and documents),
cuts out each large packed ``ids`` field and returns the rest of the message as bytes (small:
params, truncation, texts), which protobuf then decodes as usual. Each cut field becomes a
``PackedIds``: a ``Sequence[int]`` whose length is counted from the bytes (NumPy: one id per
byte below 0x80, ~10 ms for 50 MB; service/wire.py walks on a worker thread, as NumPy's count
releases the GIL) and whose ids are decoded only when read, and only the part read. The engine already counts caller-given ids before copying any (engine/prepare.py
``cut_ids``), so a request over max_model_len is refused with the engine's own error and a
truncated one copies only the kept end: the whole-message decode never runs.

The walk never decides whether a message is valid: anything it does not recognise exactly (a
field repeated where protobuf would merge, an unpacked or split ``ids`` field, bad lengths, too
many records) returns None and the caller decodes the whole message as before, so protobuf
alone answers malformed bytes.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence, overload

import numpy as np
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError
from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.api import InvalidInputError

# A request of at least this many bytes is walked; smaller ones decode faster than they walk.
WALK_FROM_BYTES = 1 << 20
# A packed ids field of at least this many bytes is cut out; smaller ones decode with the rest.
CUT_FROM_BYTES = 64 << 10
# The walk reads records in Python: a message of a million tiny items would walk slower than
# protobuf decodes it, so the walk gives up (and the message is decoded whole) past this many.
MAX_RECORDS = 4096
# The wire's longest varint (protobuf refuses longer ones).
MAX_VARINT_BYTES = 10

# Where the engine reads caller-given token ids: request type → the paths of message fields
# leading to a TokenIds (a repeated field on the way contributes its item index to the key).
TOKEN_ID_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    pb.EncodeRequest.DESCRIPTOR.full_name: (("inputs", "token_ids"),),
    pb.RewardRequest.DESCRIPTOR.full_name: (("inputs", "token_ids"),),
    pb.ScoreRequest.DESCRIPTOR.full_name: (("query", "token_ids"), ("documents", "token_ids")),
}
_IDS_TAG = (pb.TokenIds.IDS_FIELD_NUMBER << 3) | 2  # field 1, length-delimited (packed)

Key = tuple  # e.g. ("inputs", 3, "token_ids") or ("query", "token_ids")


class _Unreadable(Exception):
    """The walk met something it does not handle; the message is decoded whole instead."""


class PackedIds(Sequence[int]):
    """One packed ``TokenIds.ids`` field left on the wire: counted, decoded only where read.

    ``len`` is the count of ids (one per varint: per byte below 0x80); an index or a slice
    near either end decodes only that part (protobuf decodes the bytes of those varints).
    Bytes protobuf would refuse (an over-long varint) raise the engine's InvalidInputError
    naming ``field`` and ``index`` when read."""

    def __init__(self, data: memoryview, count: int, field: str, index: int | None) -> None:
        self._data = data
        self._count = count
        self._field, self._index = field, index
        self._all: list[int] | None = None  # every id, once read whole (a caller may iterate twice)

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if step != 1:
                return self._decode(0, self._count)[index]
            return self._decode(start, stop) if start < stop else []
        position = index + self._count if index < 0 else index
        if not 0 <= position < self._count:
            raise IndexError("token id index out of range")
        return self._decode(position, position + 1)[0]

    def __iter__(self) -> Iterator[int]:
        if self._all is None:
            self._all = self._decode(0, self._count)
        return iter(self._all)

    def _decode(self, start: int, stop: int) -> list[int]:
        """Ids ``start:stop`` as Python ints, decoded from only their own bytes where found."""
        span = self._byte_range(start, stop)
        if span is None:  # a varint longer than protobuf allows is in the way: decoding all names it
            return self._parse(0, len(self._data))[start:stop]
        return self._parse(*span)

    def _parse(self, first: int, last: int) -> list[int]:
        chunk = bytes(self._data[first:last])
        try:
            return list(pb.TokenIds.FromString(bytes([_IDS_TAG]) + varint(len(chunk)) + chunk).ids)
        except DecodeError:
            raise InvalidInputError(self._field, "token_ids: not a decodable packed list of ids", self._index) from None

    def _byte_range(self, start: int, stop: int) -> tuple[int, int] | None:
        """Bytes of ids ``start:stop``: found within a window at the nearer end, which holds
        them when every id takes at most MAX_VARINT_BYTES bytes (None when one does not)."""
        size = len(self._data)
        if start == 0 and stop == self._count:
            return 0, size
        if start == 0:  # a head: ids 0..stop-1 end within the first stop * 10 bytes
            ends = _ends(self._data[:min(size, stop * MAX_VARINT_BYTES)])
            return (0, int(ends[stop - 1]) + 1) if len(ends) >= stop else None
        need = self._count - start + 1  # a tail: ids start-1..count-1 (the end of start-1 begins it)
        if stop == self._count and need * MAX_VARINT_BYTES < size:
            window = need * MAX_VARINT_BYTES
            ends = _ends(self._data[size - window:])
            return (size - window + int(ends[len(ends) - need]) + 1, size) if len(ends) >= need else None
        ends = _ends(self._data)  # the middle (rare: the engine reads ends), or a short field: the plain way
        return int(ends[start - 1]) + 1, int(ends[stop - 1]) + 1


@dataclass(frozen=True)
class Stripped:
    """A request with its large packed ids cut out: the rest, and the cut fields by key."""

    rest: bytes
    ids: Mapping[Key, PackedIds]


def walks(cls_name: str, size: int) -> bool:
    """Whether a ``cls_name`` message of ``size`` bytes is worth walking (it can carry token ids,
    and is large enough for counting them on the wire to beat decoding them)."""
    return cls_name in TOKEN_ID_PATHS and size >= WALK_FROM_BYTES


def strip(cls_name: str, raw: bytes) -> Stripped | None:
    """``raw`` (a ``cls_name`` message) without its large token-id fields, or None when there is
    nothing to cut or the walk cannot read it exactly (the caller then decodes ``raw`` whole)."""
    if not walks(cls_name, len(raw)):
        return None
    paths = TOKEN_ID_PATHS[cls_name]
    walk = _Walk(memoryview(raw))
    try:
        rest = walk.message(pb.DESCRIPTOR.message_types_by_name[cls_name.rsplit(".", 1)[1]], 0, len(raw), paths, ())
    except Exception:  # noqa: BLE001 - _Unreadable, or anything else: decoding the whole message is always safe
        return None
    return None if rest is None else Stripped(b"".join(rest), walk.ids)


class _Walk:
    """One walk over a message's bytes; ``ids`` collects the cut fields."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.ids: dict[Key, PackedIds] = {}
        self.records = 0

    def message(self, desc: Descriptor, start: int, end: int, paths: tuple[tuple[str, ...], ...],
                key: Key) -> list[memoryview | bytes] | None:
        """The message's bytes ``start:end`` as pieces, with the large ids under ``paths`` cut
        out (a changed sub-message is written again with its new length); None when unchanged."""
        pieces: list[memoryview | bytes] = []
        seen: dict[int, int] = {}  # field number → its records so far (repeated: the next item index)
        oneofs: dict[str, int] = {}
        changed, pos = False, start
        while pos < end:
            self.records += 1
            if self.records > MAX_RECORDS:
                raise _Unreadable("too many records")
            record, (tag, pos) = pos, self.varint(pos, end)
            number, wire, field = tag >> 3, tag & 7, desc.fields_by_number.get(tag >> 3)
            if field is not None and field.containing_oneof is not None:
                if oneofs.setdefault(field.containing_oneof.name, number) != number:
                    raise _Unreadable("two members of a oneof (the last one wins)")
            if wire != 2:
                pos = self.skip(wire, pos, end)
                pieces.append(self.data[record:pos])
                continue
            after_tag = pos
            length, body = self.varint(pos, end)
            pos = body + length
            if pos > end:
                raise _Unreadable("a length past the end")
            below = tuple(p[1:] for p in paths if field is not None and p[0] == field.name)
            if not below:
                pieces.append(self.data[record:pos])
                continue
            index = seen.get(number, 0)
            seen[number] = index + 1
            repeated = field.is_repeated
            if index and not repeated:
                raise _Unreadable("a singular message field twice (protobuf merges them)")
            sub_key = (*key, field.name, index) if repeated else (*key, field.name)
            if below == ((),):
                body_pieces = self.token_ids(body, pos, sub_key)
            else:
                body_pieces = self.message(field.message_type, body, pos, below, sub_key)
            if body_pieces is None:
                pieces.append(self.data[record:pos])
            else:
                changed = True
                pieces += [self.data[record:after_tag], varint(sum(len(p) for p in body_pieces)), *body_pieces]
        if pos != end:
            raise _Unreadable("a record past the end")
        return pieces if changed else None

    def token_ids(self, start: int, end: int, key: Key) -> list[memoryview | bytes] | None:
        """A TokenIds body: one packed ``ids`` record of CUT_FROM_BYTES or more is cut out (the
        body becomes empty); anything else stays as it is (None)."""
        if end - start < CUT_FROM_BYTES or self.data[start] != _IDS_TAG:
            return None
        length, body = self.varint(start + 1, end)
        if body + length != end:
            return None  # more records than the one packed field (split, unknown): protobuf's job
        data = self.data[body:end]
        if data[-1] >= 0x80:
            raise _Unreadable("a packed field ending inside a varint")
        count = _count_ends(data)
        field_name, index = key[0], (key[1] if len(key) > 1 and isinstance(key[1], int) else None)
        self.ids[key] = PackedIds(data, count, field_name, index)
        return []

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        """The varint at ``pos``: (value, position after it)."""
        value = shift = 0
        while True:
            if pos >= end or shift >= 7 * MAX_VARINT_BYTES:
                raise _Unreadable("a truncated varint")
            byte = self.data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, pos

    def skip(self, wire: int, pos: int, end: int) -> int:
        """The position after a record's value of wire type ``wire`` (0, 1 or 5)."""
        if wire == 0:
            return self.varint(pos, end)[1]
        size = {1: 8, 5: 4}.get(wire)
        if size is None or pos + size > end:
            raise _Unreadable("a group or an unknown wire type")
        return pos + size


def _count_ends(data: memoryview) -> int:
    """Varints in ``data``: bytes below 0x80 (each ends one)."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) < 0x80))


def _ends(data: memoryview) -> np.ndarray:
    """Positions of the bytes that end a varint."""
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) < 0x80)


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# The cut ids of the request being handled, by key: set by service/wire.py around the call,
# read by the converters (service/convert.py, service/score.py) when they build engine inputs.
_CURRENT: contextvars.ContextVar[Mapping[Key, PackedIds]] = contextvars.ContextVar("packed_ids", default={})


def current() -> Mapping[Key, PackedIds]:
    """The cut token-id fields of the request this task handles (empty for most requests)."""
    return _CURRENT.get()


def bind(ids: Mapping[Key, PackedIds]) -> contextvars.Token:
    """Make ``ids`` the current request's cut fields (``unbind`` with the returned token)."""
    return _CURRENT.set(ids)


def unbind(token: contextvars.Token) -> None:
    _CURRENT.reset(token)
