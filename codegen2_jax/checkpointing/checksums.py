"""Per-array fingerprints of a pytree (path → shape, dtype, digest of its bytes) and checks.

Orbax stores arrays without end-to-end checksums: a few flipped bytes in a data file restore
with no error and silently change weights. checkpointing.py records a fingerprint of every
saved array and compares it with the restored one.

The digest is computed where the array lives, so a save only dispatches it and the step loop
goes on: every 32-bit word of the array is mixed with its position in the whole array
(MurmurHash3's finaliser, a bijection) and the mixed words are summed, in two lanes with
different position keys. Unsigned sums wrap, so they are exact in any order: each shard is
summed on its own device and the shards' sums added up, and the digest is the same however the
array is sharded, over any number of processes, with no gather. One changed word always
changes it; wider damage goes unseen with a chance of about 2^-64. It guards against damage,
not tampering.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils

Fingerprint = dict[str, Any]  # {"shape": [int, ...], "dtype": str, "digest": hex str}

_LANE_KEYS = (0x9E3779B9, 0x85EBCA77)  # odd: (position + 1) * key differs at every position


def named_leaves(tree) -> dict[str, Any]:
    """{"params/embed/embedding": leaf, ...}: the names that error messages and records use."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat}


def _words(x: jax.Array) -> jax.Array:
    """x's bits as uint32: narrower elements widened, 64-bit ones split along a new last axis."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if x.dtype.itemsize == 8:
        return lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
    return unsigned.astype(jnp.uint32)


def _word_strides(leaf: jax.Array) -> tuple[int, ...]:
    """C-order strides of the whole array's words (as _words lays them out), mod 2^32."""
    strides, stride = [], 1
    for size in reversed(leaf.shape + ((2,) if leaf.dtype.itemsize == 8 else ())):
        strides.insert(0, stride % 2**32)
        stride *= size
    return tuple(strides)


def _mix(h: jax.Array) -> jax.Array:
    h ^= h >> 16
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> 13
    h *= np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _check_shard(shard: jax.Array, start: jax.Array, strides: tuple[int, ...]) -> jax.Array:
    """[lane 0, lane 1, 1 if non-finite else 0] of one shard.

    Args:
      shard: the shard's data.
      start: the position of the shard's first word among the whole array's words.
      strides: the whole array's word strides.
    """
    words = _words(shard)
    positions = start + np.uint32(1)  # + 1: position 0 keys both lanes alike otherwise
    for axis, stride in enumerate(strides):
        iota = lax.broadcasted_iota(jnp.uint32, words.shape, axis)
        positions = positions + iota * np.uint32(stride)
    keys = np.array(_LANE_KEYS, np.uint32).reshape((-1,) + (1,) * words.ndim)
    mixed = _mix(words ^ positions * keys)  # [lane, *words.shape]
    lanes = jnp.sum(mixed, axis=tuple(range(1, mixed.ndim)), dtype=jnp.uint32)
    inexact = jnp.issubdtype(shard.dtype, jnp.inexact)
    non_finite = ~jnp.isfinite(shard).all() if inexact else jnp.bool_(False)
    return jnp.append(lanes, non_finite.astype(jnp.uint32))


class _Shard(NamedTuple):
    row: int  # the leaf's index in the tree
    data: jax.Array  # on one device
    start: int  # the position of its first word among the whole array's words
    strides: tuple[int, ...]  # the whole array's word strides


def _distinct_shards(leaves: list[jax.Array]) -> dict[jax.Device, list[_Shard]]:
    """The shards this process holds, by device; replicas are left out (counted once)."""
    by_device = {device: [] for device in jax.local_devices()}
    for row, leaf in enumerate(leaves):
        strides = _word_strides(leaf)
        for shard in leaf.addressable_shards:
            if shard.replica_id == 0:
                corner = [index.start or 0 for index in shard.index]  # a 64-bit word axis: from 0
                start = sum(i * stride for i, stride in zip(corner, strides, strict=False))
                by_device[shard.device].append(_Shard(row, shard.data, start % 2**32, strides))
    return by_device


@functools.partial(jax.jit, static_argnames=("rows", "strides", "num_leaves"))
def _check_device(shards, starts, rows, strides, num_leaves: int) -> jax.Array:
    """[1, leaves, 3]: _check_shard of each leaf's shard on one device; zeros for the others."""
    checks = dict.fromkeys(range(num_leaves), jnp.zeros(3, jnp.uint32))
    for shard, start, row, shard_strides in zip(shards, starts, rows, strides, strict=True):
        checks[row] = _check_shard(shard, start, shard_strides)
    return jnp.stack(list(checks.values()))[None]


def _check_on(device: jax.Device, shards: list[_Shard], num_leaves: int) -> jax.Array:
    """_check_device of one device's shards: a single-device program (compiled once per
    device and state layout).

    On CPU, dispatching one program that spans the devices held up the caller for much of the
    hashing; single-device programs return at once.
    """
    if not shards:
        return jax.device_put(np.zeros((1, num_leaves, 3), np.uint32), device)
    # Its own one-device mesh: a save is called inside the training mesh's context.
    with jax.set_mesh(jax.sharding.Mesh(np.array([device]), ("device",))):
        return _check_device(
            [shard.data for shard in shards],
            np.array([shard.start for shard in shards], np.uint32),
            rows=tuple(shard.row for shard in shards),
            strides=tuple(shard.strides for shard in shards),
            num_leaves=num_leaves,
        )


@jax.jit
def _sum_over_devices(checks: jax.Array) -> jax.Array:
    return jnp.sum(checks, axis=0, keepdims=True, dtype=jnp.uint32)


def _sum_across_processes(checks: list[jax.Array]) -> jax.Array:
    """[1, leaves, 3] sums of every process's per-device checks, on every device.

    A collective: every process must dispatch it for the same trees in the same order, so it
    is dispatched with the checks, never from a background thread.
    """
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))
    shape = (len(devices), *checks[0].shape[1:])
    with jax.set_mesh(mesh):
        return _sum_over_devices(jax.make_array_from_single_device_arrays(shape, sharding, checks))


class Fingerprints(NamedTuple):
    records: dict[str, Fingerprint]
    non_finite: list[str]  # names of floating-point leaves holding a NaN or an infinity


class PendingFingerprints:
    """The fingerprints and finite checks of a pytree, dispatched to its arrays' devices.

    Creating it only enqueues the work; the arrays may be donated or deleted as soon as it
    returns (the runtime keeps their buffers until the queued work has read them). result()
    waits for the work and fetches a few bytes per leaf and device. Every process must create
    it for the same trees in the same order: the sums are added up across processes with a
    collective.
    """

    def __init__(self, tree):
        leaves = named_leaves(tree)
        self._layouts = {name: (list(x.shape), str(x.dtype)) for name, x in leaves.items()}
        by_device = _distinct_shards(list(leaves.values()))
        self._checks = [
            _check_on(device, shards, len(leaves)) for device, shards in by_device.items()
        ]
        if jax.process_count() > 1:
            self._checks = [_sum_across_processes(self._checks)]

    def result(self) -> Fingerprints:
        checks = np.concatenate(jax.device_get(self._checks))
        totals = dict(zip(self._layouts, np.sum(checks, axis=0, dtype=np.uint32), strict=True))
        records = {
            name: {"shape": shape, "dtype": dtype, "digest": _hex(totals[name][:2])}
            for name, (shape, dtype) in self._layouts.items()
        }
        return Fingerprints(records, [name for name, total in totals.items() if total[2]])


def _hex(lanes: np.ndarray) -> str:
    return "".join(f"{int(lane):08x}" for lane in lanes)


def fingerprint(tree) -> dict[str, Fingerprint]:
    """Shape, dtype and digest of every leaf (waits for them)."""
    return PendingFingerprints(tree).result().records


def sha256_fingerprint(tree) -> dict[str, Fingerprint]:
    """Format 1's records, {"shape", "dtype", "sha256"}: read only to verify steps saved so.

    Each whole array is copied to the host and hashed there: in a single process on a few
    threads (at most that many leaves in host memory at once); an array that spans processes
    is gathered to every process, one at a time in tree order (collectives).
    """
    leaves = named_leaves(tree)
    if jax.process_count() > 1:
        records = [_sha256_leaf(leaf) for leaf in leaves.values()]
    else:
        with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            records = list(pool.map(_sha256_leaf, leaves.values()))
    return dict(zip(leaves, records, strict=True))


def _sha256_leaf(leaf: jax.Array) -> Fingerprint:
    if leaf.is_fully_addressable:
        host = np.asarray(jax.device_get(leaf))
    else:
        host = np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    data = np.ascontiguousarray(host).reshape(-1).view(np.uint8)  # C order; bf16 and 0-d too
    return {
        "shape": list(leaf.shape),
        "dtype": str(leaf.dtype),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def layout_mismatches(saved: dict[str, Fingerprint], target) -> list[str]:
    """Differences in parameter set, shape or dtype between a saved record and a target tree.

    Args:
      saved: name → fingerprint, as written at save time.
      target: pytree of arrays or ShapeDtypeStructs to restore into.

    Returns:
      One line per difference, naming the leaf; empty when the layouts agree.
    """
    wanted = named_leaves(target)
    problems = [
        f"{name}: in the checkpoint but not in the target" for name in saved.keys() - wanted
    ]
    problems += [
        f"{name}: in the target but not in the checkpoint" for name in wanted.keys() - saved
    ]
    for name in sorted(wanted.keys() & saved.keys()):
        have = (tuple(saved[name]["shape"]), saved[name]["dtype"])
        want = (tuple(wanted[name].shape), str(wanted[name].dtype))
        if have != want:
            problems.append(
                f"{name}: checkpoint has shape {have[0]} dtype {have[1]}, "
                f"target has shape {want[0]} dtype {want[1]}"
            )
    return sorted(problems)
