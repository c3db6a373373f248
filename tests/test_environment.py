"""The environment `make` builds is consistent: pip check is clean, one distribution per import."""

import collections
import importlib.metadata
import subprocess
import sys


def top_level_packages(dist: importlib.metadata.Distribution) -> set[str]:
    """Import names a distribution installs as regular packages or modules (not namespaces)."""
    names = set()
    for file in dist.files or ():
        parts = file.parts
        if len(parts) == 2 and parts[1] == "__init__.py":
            names.add(parts[0])
        elif len(parts) == 1 and parts[0].endswith(".py"):
            names.add(parts[0][:-3])
    return names


def test_pip_check_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_import_name_has_one_distribution():
    owners = collections.defaultdict(set)
    for dist in importlib.metadata.distributions():
        for name in top_level_packages(dist):
            owners[name].add(dist.metadata["Name"])
    shared = {name: sorted(dists) for name, dists in owners.items() if len(dists) > 1}
    assert not shared, f"import names installed by several distributions: {shared}"


def test_seqio_and_tfds_come_from_the_nightlies_t5_pins():
    for dist, name in [("seqio", "seqio-nightly"), ("tensorflow-datasets", "tfds-nightly")]:
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
        else:
            raise AssertionError(f"{dist} is installed beside {name}")
        importlib.metadata.distribution(name)
