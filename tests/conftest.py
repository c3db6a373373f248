"""Test environment: 8 fake CPU devices, fp32, quiet TensorFlow; set before jax is imported."""

import os

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count=8"
if DEVICE_COUNT_FLAG not in os.environ.get("XLA_FLAGS", ""):  # xdist workers inherit it
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_COUNT_FLAG}".strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def pytest_collection_modifyitems(items):
    """Slow cases first: under xdist both workers start on them and short tests fill in."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
