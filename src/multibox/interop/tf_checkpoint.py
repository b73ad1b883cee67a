"""A reader of TensorFlow checkpoints (the V2 "tensor bundle": ``PREFIX.index`` + ``PREFIX.data-K-of-N``).

TensorFlow is not needed. The ``.index`` file is an immutable sorted table (LevelDB's SSTable format, as
TensorFlow's ``table`` library writes it): data blocks of prefix-compressed ``key -> value`` entries with restart
points, an index block mapping each data block's last key to its ``(offset, size)`` handle, and a 48-byte footer
(metaindex and index handles as varints, padding, the magic number ``0xdb4775248b80fb57``). Each block is followed
by a 5-byte trailer: its compression type (TensorFlow writes bundles uncompressed; anything else is refused) and a
checksum. The key ``""`` holds the ``BundleHeaderProto`` (``num_shards``, ``endianness``), every other key a
tensor name whose value is a ``BundleEntryProto``: ``dtype`` (1), ``shape`` (2, a ``TensorShapeProto``),
``shard_id`` (3), ``offset`` (4), ``size`` (5), ``crc32c`` (6), ``slices`` (7). The tensor's bytes are
``size`` raw little-endian values at ``offset`` of ``PREFIX.data-<shard:05d>-of-<num_shards:05d>``.

The small protobuf messages are decoded with a wire-format reader here (no generated classes); every offset and
length is checked against the file, and a tensor's byte count against its dtype and shape, so a damaged or
hostile file gives a :class:`CheckpointError` naming the file, never an out-of-range read or a huge allocation.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CheckpointError", "TensorEntry", "TFCheckpoint", "TABLE_MAGIC"]

TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
_TRAILER = 5
#: TensorFlow ``DataType`` -> NumPy dtype (little-endian)
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 17: "<u2", 19: "<f2",
           22: "<u4", 23: "<u8"}
_DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
                9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32", 23: "uint64"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (the message names the file and the problem)."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the bundle: ``dtype`` (TensorFlow's enum), ``shape``, ``shard``, byte ``offset`` and
    ``size``, and whether it is stored as slices (not supported)."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    sliced: bool = False

    @property
    def dtype_name(self) -> str:
        return _DTYPE_NAMES.get(self.dtype, f"dtype {self.dtype}")


def _varint(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError(f"truncated varint in {what}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, what: str) -> Iterator[tuple[int, int, int | bytes]]:
    """Protobuf wire format: ``(field number, wire type, value)`` (varints as ints, length-delimited as bytes)."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, end, what)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos, end, what)
            yield field, wire, val
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError(f"truncated fixed64 in {what}")
            yield field, wire, struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos, end, what)
            if pos + n > end:
                raise ValueError(f"truncated field {field} in {what}")
            yield field, wire, buf[pos:pos + n]
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError(f"truncated fixed32 in {what}")
            yield field, wire, struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire} in {what}")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _shape(buf: bytes, what: str) -> tuple[int, ...]:
    dims = []
    for field, wire, val in _fields(buf, what):
        if field == 2 and wire == 2:  # Dim {size = 1, name = 2}
            size = 0
            for f2, w2, v2 in _fields(val, what):  # type: ignore[arg-type]
                if f2 == 1 and w2 == 0:
                    size = _signed(int(v2))  # type: ignore[arg-type]
            dims.append(size)
        elif field == 3 and wire == 0 and val:
            raise ValueError(f"unknown rank in {what}")
    return tuple(dims)


class TFCheckpoint:
    """The tensors of a TensorFlow V2 checkpoint ``prefix`` (``prefix.index`` and its data shards).

    ``names()`` lists them, ``entry(name)`` describes one, ``read(name)`` returns it as a NumPy array. A
    ``prefix`` may also be given as the ``.index`` file or a data shard's path."""

    def __init__(self, prefix: str | os.PathLike) -> None:
        p = str(prefix)
        for suffix in (".index",):
            if p.endswith(suffix):
                p = p[: -len(suffix)]
        if ".data-" in Path(p).name:
            p = p[: p.rindex(".data-")]
        self.prefix = Path(p)
        self.index_path = Path(p + ".index")
        if not self.index_path.is_file():
            raise CheckpointError(f"{self.index_path}: checkpoint index not found (give the checkpoint prefix, "
                                  "e.g. model.ckpt-1000 for model.ckpt-1000.index)")
        data = self.index_path.read_bytes()
        try:
            entries, self.num_shards = self._parse_index(data)
        except ValueError as e:
            raise CheckpointError(f"{self.index_path}: not a TensorFlow checkpoint index ({e})") from None
        self._entries = entries

    # --------------------------------------------------------------------------------------------- index
    @staticmethod
    def _block(data: bytes, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size + _TRAILER > len(data):
            raise ValueError(f"{what} block at {offset}+{size} lies outside the file")
        if data[offset + size] != 0:
            raise ValueError(f"{what} block is compressed (type {data[offset + size]}); TensorFlow writes "
                             "bundles uncompressed")
        return data[offset:offset + size]

    @staticmethod
    def _entries_of(block: bytes, what: str) -> Iterator[tuple[bytes, bytes]]:
        if len(block) < 4:
            raise ValueError(f"{what} block too short")
        n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
        end = len(block) - 4 - 4 * n_restarts
        if end < 0:
            raise ValueError(f"{what} block: bad restart count {n_restarts}")
        pos, key = 0, b""
        while pos < end:
            shared, pos = _varint(block, pos, end, what)
            non_shared, pos = _varint(block, pos, end, what)
            vlen, pos = _varint(block, pos, end, what)
            if shared > len(key) or pos + non_shared + vlen > end:
                raise ValueError(f"{what} block: bad entry")
            key = key[:shared] + block[pos:pos + non_shared]
            pos += non_shared
            yield key, block[pos:pos + vlen]
            pos += vlen

    def _parse_index(self, data: bytes) -> tuple[dict[str, TensorEntry], int]:
        if len(data) < _FOOTER:
            raise ValueError("shorter than a table footer")
        footer = data[-_FOOTER:]
        if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
            raise ValueError("bad table magic number")
        pos = 0
        _, pos = _varint(footer, pos, 40, "footer")  # metaindex offset
        _, pos = _varint(footer, pos, 40, "footer")  # metaindex size
        idx_off, pos = _varint(footer, pos, 40, "footer")
        idx_size, pos = _varint(footer, pos, 40, "footer")
        index = self._block(data, idx_off, idx_size, "index")
        entries: dict[str, TensorEntry] = {}
        num_shards = 1
        header_seen = False
        for _, handle in self._entries_of(index, "index"):
            off, hp = _varint(handle, 0, len(handle), "block handle")
            size, _ = _varint(handle, hp, len(handle), "block handle")
            for key, value in self._entries_of(self._block(data, off, size, "data"), "data"):
                if key == b"":
                    header_seen = True
                    for field, wire, val in _fields(value, "BundleHeaderProto"):
                        if field == 1 and wire == 0:
                            num_shards = int(val)  # type: ignore[arg-type]
                        elif field == 2 and wire == 0 and val != 0:
                            raise ValueError("big-endian bundles are not supported")
                    continue
                name = key.decode("utf8", errors="replace")
                entries[name] = self._entry(name, value)
        if not header_seen:
            raise ValueError("no bundle header")
        if not 1 <= num_shards <= 100000:
            raise ValueError(f"bad shard count {num_shards}")
        return entries, num_shards

    @staticmethod
    def _entry(name: str, value: bytes) -> TensorEntry:
        what = f"entry {name!r}"
        dtype = shard = offset = size = 0
        shape: tuple[int, ...] = ()
        sliced = False
        for field, wire, val in _fields(value, what):
            if field == 1 and wire == 0:
                dtype = int(val)  # type: ignore[arg-type]
            elif field == 2 and wire == 2:
                shape = _shape(val, what)  # type: ignore[arg-type]
            elif field == 3 and wire == 0:
                shard = int(val)  # type: ignore[arg-type]
            elif field == 4 and wire == 0:
                offset = _signed(int(val))  # type: ignore[arg-type]
            elif field == 5 and wire == 0:
                size = _signed(int(val))  # type: ignore[arg-type]
            elif field == 7:
                sliced = True
        return TensorEntry(name, dtype, shape, shard, offset, size, sliced)

    # -------------------------------------------------------------------------------------------- tensors
    def names(self) -> list[str]:
        """Every tensor name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entry(self, name: str) -> TensorEntry:
        """The entry ``name``; :class:`CheckpointError` naming the checkpoint otherwise."""
        if name not in self._entries:
            raise CheckpointError(f"{self.prefix}: the checkpoint has no variable {name!r}")
        return self._entries[name]

    def shard_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def read(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a NumPy array of its dtype and shape."""
        e = self.entry(name)
        if e.sliced:
            raise CheckpointError(f"{self.prefix}: variable {name!r} is stored as slices (partitioned); not "
                                  "supported")
        if e.dtype not in _DTYPES:
            raise CheckpointError(f"{self.prefix}: variable {name!r} has unsupported type {e.dtype_name}")
        dt = np.dtype(_DTYPES[e.dtype])
        if any(d < 0 for d in e.shape):
            raise CheckpointError(f"{self.prefix}: variable {name!r} has a negative dimension {list(e.shape)}")
        count = int(np.prod(e.shape, dtype=np.int64)) if e.shape else 1
        if count * dt.itemsize != e.size:
            raise CheckpointError(f"{self.prefix}: variable {name!r}: {e.size} bytes for a {e.dtype_name} tensor "
                                  f"of shape {list(e.shape)}")
        if not 0 <= e.shard < self.num_shards:
            raise CheckpointError(f"{self.prefix}: variable {name!r} names shard {e.shard} of {self.num_shards}")
        path = self.shard_path(e.shard)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint data file not found")
        if e.offset < 0 or e.offset + e.size > path.stat().st_size:
            raise CheckpointError(f"{path}: variable {name!r} lies outside the data file (offset {e.offset}, "
                                  f"{e.size} bytes)")
        with path.open("rb") as f:
            f.seek(e.offset)
            raw = f.read(e.size)
        return np.frombuffer(raw, dtype=dt).reshape(e.shape).astype(dt.newbyteorder("="))
