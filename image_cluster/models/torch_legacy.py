"""Read a state dict saved in torch's legacy (non-zip) format, without torch.

Layout of such a file: four pickles (magic number, protocol version, sys info, the
state dict) then the list of storage keys, then each storage as an int64 element count
followed by its raw little-endian data. Tensors inside the state-dict pickle refer to
storages by key through pickle's persistent-id mechanism.

The unpickler admits only the few globals a state dict needs (the tensor-rebuild
function, storage types, OrderedDict), so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a global that a plain state dict never needs."""


@dataclass(frozen=True)
class _TensorRef:
    storage_key: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: type
    numel: int


def _rebuild_tensor_v2(storage, offset, shape, strides, *_ignored):
    return (storage, _TensorRef(storage.key, offset, tuple(shape), tuple(strides)))


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise UnsafePickleError(f"refusing global {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if storage_type not in _STORAGE_DTYPES:
            raise UnsafePickleError(f"unknown storage type {storage_type!r}")
        return _StorageRef(str(key), _STORAGE_DTYPES[storage_type], int(numel))


def _load(f: BinaryIO):
    return _RestrictedUnpickler(f).load()


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Return the state dict as name -> numpy array (copies, C-contiguous)."""
    with open(path, "rb") as f:
        if _load(f) != MAGIC_NUMBER:
            raise ValueError(f"{path}: not a legacy torch file (bad magic number)")
        if _load(f) != PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported torch protocol version")
        sys_info = _load(f)
        if not sys_info.get("little_endian", False):
            raise ValueError(f"{path}: big-endian files are not supported")
        raw_state = _load(f)
        storage_keys = _load(f)

        storages: dict[str, np.ndarray] = {}
        refs = {ref.key: ref for ref, _ in raw_state.values()}
        for key in storage_keys:
            ref = refs[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != ref.numel:
                raise ValueError(f"{path}: storage {key} has {numel} elements, expected {ref.numel}")
            dtype = np.dtype(ref.dtype).newbyteorder("<")
            data = f.read(numel * dtype.itemsize)
            if len(data) != numel * dtype.itemsize:
                raise ValueError(f"{path}: truncated storage {key}")
            storages[key] = np.frombuffer(data, dtype=dtype)

    state: dict[str, np.ndarray] = {}
    for name, (_, t) in raw_state.items():
        flat = storages[t.storage_key]
        if any(n < 0 for n in t.shape) or any(s < 0 for s in t.strides):
            raise ValueError(f"{path}: tensor {name} has a negative shape or stride")
        last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.strides) if n > 0)
        if t.offset < 0 or (all(t.shape) and last >= flat.size):
            raise ValueError(f"{path}: tensor {name} reaches outside its storage")
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[t.offset:], shape=t.shape, strides=[s * itemsize for s in t.strides]
        )
        state[name] = np.ascontiguousarray(view)
    return state
