import subprocess
import sys
import textwrap

import pytest

from tml.training.host_memory import retain_freed_memory

FAULTS_OF_REPEATED_ALLOCATIONS = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from tml.training.host_memory import retain_freed_memory
    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    def step():  # like a training step: tensors live together, then all are freed
        alive = [np.ones(2_000_000, dtype=np.float32) for _ in range(4)]  # 4 x 8 MB
        del alive
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def faults(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_REPEATED_ALLOCATIONS, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_serves_repeated_large_allocations_without_page_faults():
    # 40 allocations of 8 MB, 4 at a time: ~2,000 faults per freed block that went back
    # to the kernel.
    assert faults("default") > 10_000
    assert faults("retain") < 1_000


def test_it_applies_in_this_process():
    assert retain_freed_memory() == sys.platform.startswith("linux")
