"""meshrender.heap: freed numpy temporaries' pages go back to the OS (glibc keeps them otherwise)."""

import subprocess
import sys

from conftest import REPO

CHILD = r"""
import numpy as np
from meshrender.heap import release_free_memory

def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024

big = np.ones(2**21)  # 16 MB, mapped; freeing it lifts glibc's mmap threshold (max 32 MB) to 16 MB
del big
blocks = [np.ones(2**19) for _ in range(50)]  # 4 MB each: from the heap now, 200 MB resident
pin = np.ones(2**17)  # a live 1 MB block above them: the heap's top cannot shrink on its own
del blocks
before = rss_mb()
ok = release_free_memory()
print(ok, before, rss_mb())
"""


def test_freed_heap_pages_go_back_to_the_os():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, check=True)
    ok, before, after = out.stdout.split()
    assert ok == "True"  # glibc: the test machines' C library
    assert float(before) - float(after) > 150, out.stdout  # the 200 MB of freed blocks, returned
