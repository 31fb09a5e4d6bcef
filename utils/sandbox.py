"""Limits for running an untrusted submission: memory, threads, time, network, and guards on trusted modules.

What this protects against (and what it does not) is written out in README.md, "For instructors".
"""

from __future__ import annotations

import builtins
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import types
from collections.abc import Iterable

# environment of the child that runs a submission: few threads, no hub, no GUI
CHILD_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg",
    "PYTHONDONTWRITEBYTECODE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}


class NetworkBlocked(OSError):
    """A submission tried to use the network during grading."""


class CellTimeout(BaseException):
    """A cell or a check ran past its time limit (BaseException, so `except Exception` in a submission won't eat it)."""


def limit_memory(max_bytes: int) -> None:
    """Cap this process's address space (RLIMIT_AS): an allocation past it raises MemoryError instead of swapping."""
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))


def network_namespace_prefix() -> list[str]:
    """`unshare -n` (root) or `unshare -rn` (user namespaces) if it works here: the child then has no network."""
    exe = shutil.which("unshare")
    if not exe:
        return []
    for flags in (["-n"], ["-r", "-n"]):
        try:
            ok = subprocess.run([exe, *flags, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return [exe, *flags]
    return []


def _refuse(*args, **kwargs):
    raise NetworkBlocked("network access is blocked while grading")


def block_sockets() -> None:
    """Make socket connect/bind/send, new `_socket` sockets and name lookups raise NetworkBlocked.

    A deterrent inside the process (code can still reach the C type through socket.socket's bases): the real
    barrier is the empty network namespace of `network_namespace_prefix`.
    """
    import _socket

    for name in ("connect", "connect_ex", "bind", "sendto", "sendmsg"):
        setattr(socket.socket, name, _refuse)
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "create_server"):
        setattr(socket, name, _refuse)
    for name in ("socket", "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        setattr(_socket, name, _refuse)


def time_limit(seconds: float) -> None:
    """Raise CellTimeout in the main thread after `seconds` (0 clears the alarm)."""
    def _alarm(signum, frame):
        raise CellTimeout(f"stopped after {seconds:g} s")

    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.0, seconds))


# --------------------------------------------------------------------------- guards on trusted modules
_IPYTHON_BUILTINS = {"_", "__", "___", "exit", "quit", "get_ipython", "display", "__IPYTHON__", "__builtins__"}


class ModuleGuard:
    """A snapshot of modules' and classes' attributes (and their functions' code) to detect and undo patches."""

    def __init__(self, strict: Iterable[str], loose: Iterable[object], package: str = "utils"):
        self.package = package  # course modules imported after the snapshot are dropped, so checks re-import them
        self.strict = {name: sys.modules[name] for name in strict}  # course modules: any change counts
        self.loose = list(loose)  # libraries the checks use: changed or deleted attributes count
        self._saved = {id(o): (o, dict(vars(o))) for o in [*self.strict.values(), *self.loose, *self._classes()]}
        self._code = {id(f): (f, f.__code__, f.__defaults__, f.__kwdefaults__) for f in self._functions()}

    def _classes(self):
        for mod in self.strict.values():
            for v in list(vars(mod).values()):
                if isinstance(v, type) and v.__module__ == mod.__name__:
                    yield v

    def _functions(self):
        for _obj, attrs in self._saved.values():
            for v in attrs.values():
                if isinstance(v, types.FunctionType):
                    yield v

    def changes(self) -> list[str]:
        """What was patched since the snapshot, as 'module.name' strings (empty: untouched)."""
        found = []
        for name, mod in self.strict.items():
            if sys.modules.get(name) is not mod:
                found.append(f"sys.modules[{name!r}]")
        for obj, attrs in self._saved.values():
            label = getattr(obj, "__name__", type(obj).__name__)
            now = vars(obj)
            strict = obj in self.strict.values() or isinstance(obj, type) and obj not in self.loose
            skip = _IPYTHON_BUILTINS if obj is builtins else set()
            for key, value in attrs.items():
                if key in skip or key in now and (now[key] is value or not strict
                                                  and _library_wrapper(now[key], value)):
                    continue
                found.append(f"{label}.{key}")
            if strict:
                found += [f"{label}.{key} (added)" for key in now if key not in attrs and not key.startswith("__")
                          and not self._is_submodule(obj, key, now[key])]
        for f, code, defaults, kwdefaults in self._code.values():
            if f.__code__ is not code or f.__defaults__ is not defaults or f.__kwdefaults__ is not kwdefaults:
                found.append(f"{f.__module__}.{f.__qualname__}.__code__")
        return sorted(set(found))

    @staticmethod
    def _is_submodule(obj, key: str, value) -> bool:
        name = f"{getattr(obj, '__name__', '')}.{key}"
        return isinstance(value, types.ModuleType) and value.__name__ == name

    def _late_modules(self) -> list[str]:
        return [m for m in list(sys.modules) if (m == self.package or m.startswith(self.package + "."))
                and m not in self.strict]

    def restore(self) -> None:
        """Put every snapshotted attribute, function body and module back; forget course modules imported since."""
        for name in self._late_modules():
            del sys.modules[name]
        for name, mod in self.strict.items():
            sys.modules[name] = mod
        for obj, attrs in self._saved.values():
            now = vars(obj)
            for key, value in attrs.items():
                if now.get(key, _MISSING) is not value:
                    try:
                        setattr(obj, key, value)
                    except (AttributeError, TypeError):
                        pass
            if obj in self.strict.values():
                for key in [k for k in now if k not in attrs]:
                    delattr(obj, key)
        for f, code, defaults, kwdefaults in self._code.values():
            f.__code__, f.__defaults__, f.__kwdefaults__ = code, defaults, kwdefaults


_MISSING = object()


def _library_wrapper(new, old) -> bool:
    """A library's own wrapper of a function (e.g. torch._dynamo wraps torch.manual_seed when it is imported)."""
    code = getattr(new, "__code__", None)
    return getattr(new, "__wrapped__", None) is old and code is not None and os.path.isfile(code.co_filename)


def child_preexec(max_bytes: int):
    """A preexec_fn for subprocess: its own process group and the memory cap."""
    def _pre():
        os.setsid()
        try:
            limit_memory(max_bytes)
        except (ValueError, OSError):  # macOS does not enforce RLIMIT_AS: the cap is Linux-only
            pass

    return _pre
