"""Sandbox init: the in-namespace first process that sets up mounts and runs one program.

Executed by sandbox.py as `python -I -S sandbox_init.py CONFIG_JSON` (standard library only,
nothing from this package), as root inside fresh mount/PID/IPC/network namespaces when
available. It hides paths, makes the filesystem read-only, gives the program a private tmpfs,
then runs the program (already wrapped by the caller in setpriv) with rlimits, waits for it,
writes a JSON report to the status file descriptor and closes it, which tells the harness the
program has ended. When this process exits, the kernel kills everything left in its PID
namespace.

Each mount step is reported as "active" or "failed: <why>"; a step listed in `required` that
fails aborts the run before the program starts, so a protection is never silently missing.
"""

import ctypes
import json
import os
import resource
import subprocess
import sys

_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MNT_DETACH = 0x2
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
# Syscalls numbered from 424 up share one number on every Linux architecture.
_SYS_MOUNT_SETATTR = 442


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("set", "clr", "propagation", "userns_fd")]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode(), target.encode(), fstype and fstype.encode(), flags, data.encode()
        ),
        f"mount {target}",
    )


def _hide(hidden: list[str], expose: list[str], stage: str) -> None:
    """Covers each hidden directory with an empty tmpfs, re-exposing `expose` paths under it.

    The interpreter may live under the harness's home (pyenv, a venv): those paths are bound to
    a staging point first, then bound back at their original path on top of the empty tmpfs.
    """
    for top in hidden:
        inside = [p for p in expose if p.startswith(top.rstrip("/") + "/")]
        staged = []
        for i, path in enumerate(inside):
            point = os.path.join(stage, str(i))
            os.mkdir(point)
            _mount(path, point, None, _MS_BIND | _MS_REC)
            staged.append((point, path))
        _mount("tmpfs", top, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
        for point, path in staged:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(point, path, None, _MS_BIND | _MS_REC)
            _check(_libc.umount2(point.encode(), _MNT_DETACH), f"umount {point}")


def _read_only_root() -> None:
    """Makes every mount read-only in this namespace (per-mount flag; the host is unaffected)."""
    attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    ret = _libc.syscall(
        _SYS_MOUNT_SETATTR, _AT_FDCWD, b"/", _AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(ret, "mount_setattr / read-only")


def _private_tmpfs(work: str, uid: int, gid: int, size: int) -> None:
    """Mounts a size-capped tmpfs owned by the sandbox user as the program's working dir."""
    options = f"size={size},nr_inodes=4096,mode=0700,uid={uid},gid={gid}"
    _mount("tmpfs", work, "tmpfs", _MS_NOSUID | _MS_NODEV, options)


def _setup(config: dict) -> dict[str, str]:
    """Runs the mount steps in order (hide, read-only, tmpfs); returns each step's outcome."""
    steps = {
        "hidden_home": lambda: _hide(config["hide"], config["expose"], config["stage"]),
        "read_only_filesystem": _read_only_root,
        "private_tmpfs": lambda: _private_tmpfs(
            config["work"], config["uid"], config["gid"], config["tmpfs_bytes"]
        ),
    }
    outcome = {}
    for name, step in steps.items():
        if name not in config["steps"]:
            continue
        try:
            step()
            outcome[name] = "active"
        except OSError as e:
            outcome[name] = f"failed: {e}"
    return outcome


def _set_rlimits(limits: dict[str, list[int]]) -> None:
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, name), (soft, hard))


def main(config: dict) -> None:
    status = os.fdopen(config["status_fd"], "w")
    steps = _setup(config)
    failed = [n for n in config["required"] if not steps.get(n, "").startswith("active")]
    report: dict = {"steps": steps}
    if not failed:
        proc = subprocess.Popen(
            config["argv"],
            cwd=config["work"],
            env=config["env"],
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: _set_rlimits(config["rlimits"]),
        )
        _, wait_status, usage = os.wait4(proc.pid, 0)
        report["returncode"] = os.waitstatus_to_exitcode(wait_status)
        report["cpu_s"] = usage.ru_utime + usage.ru_stime
    json.dump(report, status)
    status.close()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
