"""Streaming reader of TensorBoard event files (TFRecord framing + Event/Summary protobufs).

Neither tensorflow nor tensorboard is needed. The file is read one record at a time (memory stays
at the size of the largest record, whatever the file's size), so a 100 MB events file or one still
being written reads fine: a partial last record (the writer has not flushed it yet) is skipped with
a ``RuntimeWarning``, not an error.

Checks: every record's length CRC (masked CRC-32C, as TFRecord defines it); the data CRC of every
record that holds a scalar (the values returned). Records without scalars (images, histograms,
graphs) are skipped after a structural parse, without a data CRC: checksumming megabytes of image
bytes in Python would cost seconds and returns nothing.

Example:
    >>> import os, struct, tempfile
    >>> from workbench.tfevents import scalars, encode_scalar_event, frame
    >>> p = os.path.join(tempfile.mkdtemp(), "events.out.tfevents.1.host")
    >>> _ = open(p, "wb").write(frame(encode_scalar_event(7, "train/loss", 2.5)))
    >>> [s[1:] for s in scalars(p)]
    [('train/loss', 7, 2.5)]
"""
from __future__ import annotations

import os
import struct
import warnings
from typing import Iterator

__all__ = ["scalars", "masked_crc", "frame", "encode_scalar_event", "encode_varint"]


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    t = _CRC_TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


try:  # a C implementation when one is installed (optional: google-crc32c); the table version otherwise
    from google_crc32c import value as _fast_crc32c
except ImportError:  # pragma: no cover - depends on the environment
    _fast_crc32c = None


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    c = _fast_crc32c(data) if _fast_crc32c is not None else _crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """Yield ``(field_number, wire_type, value)`` of a protobuf message (value: int or bytes)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        if i > len(buf):
            raise ValueError("truncated protobuf field")
        yield num, wt, v


def _tensor_value(buf: bytes) -> float | None:
    """A scalar from a TensorProto (float_val, double_val or tensor_content)."""
    dtype, content = 1, None
    for num, wt, v in _fields(buf):
        if num == 1 and wt == 0:
            dtype = v
        elif num == 4 and wt == 2:
            content = v
        elif num == 5 and len(v) >= 4:  # float_val: packed (wt 2) or single (wt 5)
            return struct.unpack("<f", v[:4])[0]
        elif num == 6 and len(v) >= 8:  # double_val
            return struct.unpack("<d", v[:8])[0]
    if content:
        if dtype == 2 and len(content) >= 8:
            return struct.unpack("<d", content[:8])[0]
        if dtype == 1 and len(content) >= 4:
            return struct.unpack("<f", content[:4])[0]
    return None


def _event_scalars(body: bytes) -> tuple[int, list[tuple[str, float]]]:
    """``(step, [(tag, value), ...])`` of one Event message."""
    step, out = 0, []
    for num, wt, v in _fields(body):
        if num == 2 and wt == 0:
            step = v - (1 << 64) if v >= 1 << 63 else v
        elif num == 5 and wt == 2:
            for n1, w1, val in _fields(v):
                if n1 != 1 or w1 != 2:
                    continue
                tag, value = None, None
                for n2, w2, v2 in _fields(val):
                    if n2 == 1 and w2 == 2:
                        tag = v2.decode("utf-8", "replace")
                    elif n2 == 2 and w2 == 5:
                        value = struct.unpack("<f", v2)[0]
                    elif n2 == 8 and w2 == 2 and value is None:
                        value = _tensor_value(v2)
                if tag is not None and value is not None:
                    out.append((tag, float(value)))
    return int(step), out


def scalars(path: str | os.PathLike) -> Iterator[tuple[str, str, int, float]]:
    """Yield ``(where, tag, step, value)`` for every scalar of an events file, in file order,
    reading one record at a time. Raises ``ValueError`` naming the file and record on a damaged
    or non-TFRecord file."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = rec = 0
        while True:
            header = f.read(12)
            if not header:
                return
            rec += 1
            where = f"{path}, record {rec} (byte {pos})"
            if len(header) < 12:
                warnings.warn(f"{where}: partial record at the end of the file skipped (still being written?)",
                              RuntimeWarning, stacklevel=2)
                return
            (length,) = struct.unpack("<Q", header[:8])
            (hcrc,) = struct.unpack("<I", header[8:])
            if hcrc != masked_crc(header[:8]):
                raise ValueError(f"{where}: corrupt TFRecord length (CRC mismatch); is this a TensorBoard events "
                                 "file? Re-export the run or move the file out of the log folder")
            if pos + 16 + length > size:
                warnings.warn(f"{where}: partial record at the end of the file skipped (still being written?)",
                              RuntimeWarning, stacklevel=2)
                return
            body = f.read(length)
            tail = f.read(4)
            if len(body) < length or len(tail) < 4:
                warnings.warn(f"{where}: partial record at the end of the file skipped (still being written?)",
                              RuntimeWarning, stacklevel=2)
                return
            pos += 16 + length
            try:
                step, found = _event_scalars(body)
                error = None
            except (ValueError, struct.error) as exc:
                step, found, error = 0, [], exc
            if found or error is not None:
                if struct.unpack("<I", tail)[0] != masked_crc(body):
                    raise ValueError(f"{where}: corrupt TFRecord data (CRC mismatch); the file is damaged: "
                                     "re-export the run or move the file out of the log folder")
                if error is not None:
                    raise ValueError(f"{where}: unreadable Event protobuf ({error}); not a TensorBoard events file?")
            for tag, value in found:
                yield where, tag, step, value


# --------------------------------------------------------------------------- writing (tests, fixtures)
def encode_varint(n: int) -> bytes:
    """``n`` as a protobuf varint (7 bits a byte, low first)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _enc_field(num: int, wire: int, payload: bytes) -> bytes:
    key = encode_varint((num << 3) | wire)
    return key + encode_varint(len(payload)) + payload if wire == 2 else key + payload


def encode_scalar_event(step: int, tag: str, value: float, wall_time: float = 1.7e9) -> bytes:
    """An Event protobuf holding one ``simple_value`` scalar (what ``add_scalar`` writes)."""
    val = _enc_field(1, 2, tag.encode()) + _enc_field(2, 5, struct.pack("<f", value))
    return (_enc_field(1, 1, struct.pack("<d", wall_time)) + _enc_field(2, 0, encode_varint(step))
            + _enc_field(5, 2, _enc_field(1, 2, val)))


def frame(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))
