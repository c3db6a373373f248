"""Test environment: 8 fake CPU devices, fp32, quiet TensorFlow; set before jax is imported.

Also the collection hook that makes ``--dist loadgroup`` keep an ``xdist_group`` on one worker.
"""

import os

import pytest

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count=8"
if DEVICE_COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):  # xdist workers inherit it
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_COUNT_FLAG}".strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.hookimpl(trylast=True)  # after xdist's worker hook, which names each item's group
def pytest_collection_modifyitems(items):
    """Slow cases first: under xdist both workers start on them and short tests fill in.

    Under ``--dist loadgroup`` xdist appends ``@<group>`` to the node id of each item with an
    ``xdist_group`` mark, and its scheduler keeps items with one suffix on one worker.
    pytest-xdist 3.8 stores the new id in ``item._nodeid``, which pytest 9.2 no longer reads
    (a node's id lives in ``item._id``), so the suffix was lost and a group's tests were
    spread over the workers. Moving it into ``_id`` here restores the grouping; it changes
    nothing where xdist's assignment took effect, or without xdist.
    """
    for item in items:
        grouped = item.__dict__.get("_nodeid")
        if isinstance(grouped, str) and grouped != item.nodeid and hasattr(item, "_id"):
            item._id = type(item._id).parse(grouped)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
