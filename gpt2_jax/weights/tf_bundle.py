"""Read TensorFlow checkpoints (the V2 tensor-bundle format) with numpy only, no TensorFlow.

A checkpoint `PREFIX` is `PREFIX.index`, an SSTable (LevelDB table format) mapping each tensor
name to a BundleEntryProto (dtype, shape, shard, offset, size), with the BundleHeaderProto under
the empty key, and `PREFIX.data-SSSSS-of-NNNNN` shards holding the raw little-endian bytes.
Only what OpenAI's GPT-2 checkpoints use is supported: uncompressed blocks, whole (unsliced)
tensors of numeric dtypes. Block and tensor checksums are not verified.
"""

from __future__ import annotations

import pathlib
import struct

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
# tensorflow/core/framework/types.proto DataType -> numpy dtype (little-endian).
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 17: "<u2", 19: "<f2",
          22: "<u4", 23: "<u8"}


class BundleError(ValueError):
    """A checkpoint file that is not a readable TF tensor bundle; the message names the file."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message: ints for varint/fixed, bytes for length-delimited."""
    out, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise BundleError(f"unsupported protobuf wire type {wire}")
        out.append((field, value))
    return out


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of one SSTable block (keys are prefix-compressed against the previous key)."""
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + value_len]))
        pos += value_len
    return entries


def _read_block(data: bytes, handle: bytes, path: pathlib.Path) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if data[offset + size] != 0:  # the 1-byte trailer after each block names its compression
        raise BundleError(f"{path}: compressed SSTable blocks are not supported")
    return data[offset:offset + size]


def read_index(path: str | pathlib.Path) -> dict[bytes, bytes]:
    """Every (key, value) of an SSTable file, in key order."""
    path = pathlib.Path(path)
    data = path.read_bytes()
    if len(data) < FOOTER_BYTES or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        raise BundleError(f"{path} is not a TensorFlow checkpoint index (no SSTable footer)")
    footer = data[-FOOTER_BYTES:]
    _, pos = _varint(footer, 0)  # skip the metaindex handle
    _, pos = _varint(footer, pos)
    index_handle = footer[pos:]
    out = {}
    for _, block_handle in _block_entries(_read_block(data, index_handle, path)):
        out.update(_block_entries(_read_block(data, block_handle, path)))
    return out


def _entry(value: bytes, name: str) -> dict:
    fields = _proto_fields(value)
    entry = {"dtype": 1, "shape": [], "shard_id": 0, "offset": 0, "size": 0}
    for field, v in fields:
        if field == 1:
            entry["dtype"] = v
        elif field == 2:
            entry["shape"] = [dict(_proto_fields(dim)).get(1, 0) for f, dim in _proto_fields(v) if f == 2]
        elif field in (3, 4, 5):
            entry[("shard_id", "offset", "size")[field - 3]] = v
        elif field == 7:
            raise BundleError(f"tensor {name!r} is stored in slices; only whole tensors are supported")
    return entry


def read_checkpoint(prefix: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of the TF checkpoint `prefix` (e.g. `.../model.ckpt`) as numpy arrays."""
    prefix = pathlib.Path(prefix)
    index_path = prefix.with_name(prefix.name + ".index")
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} not found; pass the checkpoint prefix, e.g. DIR/model.ckpt")
    table = read_index(index_path)
    header = dict(_proto_fields(table.pop(b"", b"")))
    num_shards = header.get(1, 1)
    if header.get(2, 0) != 0:
        raise BundleError(f"{index_path}: big-endian checkpoints are not supported")
    shards: dict[int, np.memmap] = {}
    tensors = {}
    for key, value in table.items():
        name = key.decode("utf-8")
        e = _entry(value, name)
        if e["dtype"] not in DTYPES:
            raise BundleError(f"tensor {name!r} has TF dtype {e['dtype']}, which this reader does not support")
        shard = e["shard_id"]
        if shard not in shards:
            data_path = prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")
            if not data_path.is_file():
                raise FileNotFoundError(f"{data_path} not found; the checkpoint is incomplete")
            shards[shard] = np.memmap(data_path, dtype=np.uint8, mode="r")
        raw = shards[shard][e["offset"]:e["offset"] + e["size"]]
        dtype = np.dtype(DTYPES[e["dtype"]])
        if raw.size != e["size"] or e["size"] != dtype.itemsize * int(np.prod(e["shape"], dtype=np.int64)):
            raise BundleError(f"tensor {name!r}: {raw.size} bytes stored, shape {e['shape']} needs "
                              f"{dtype.itemsize * int(np.prod(e['shape']))}; the checkpoint is damaged")
        tensors[name] = np.frombuffer(raw.tobytes(), dtype).reshape(e["shape"])
    return tensors
