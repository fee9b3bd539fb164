import subprocess
import sys

import pytest

from minesweep.host_memory import retain_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_large_blocks_stay_in_the_process():
    # In a fresh interpreter: a 64 MiB block freed and allocated again must not be a new mapping,
    # i.e. the second allocation reuses the heap (same address) once the setting is on.
    code = """
import ctypes, sys
from minesweep.host_memory import retain_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def mapped_kib():
    return sum(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize"))
assert retain_freed_memory()
p = libc.malloc(64 << 20); libc.free(p)
size_after_free = mapped_kib()
q = libc.malloc(64 << 20)
print(size_after_free, mapped_kib(), p == q)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    after_free, after_realloc, same_block = int(out[0]), int(out[1]), out[2] == "True"
    assert same_block and after_realloc == after_free, out


def test_is_harmless_to_call_twice():
    first = retain_freed_memory()
    assert retain_freed_memory() == first
