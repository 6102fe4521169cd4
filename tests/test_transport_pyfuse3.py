"""The pyfuse3 transport (libfuse 3.14 through pyfuse3), no longer the default: the mount
suites over it, so that the default run (over dev) still covers it.

The POSIX tests, the differential state machine and the fio verify jobs, collected
again with every mount over ``pyfuse3``; in a run over pyfuse3 (``pytest --transport
pyfuse3``, which mounts every other test over it too) they are skipped as repeats.
What differs on pyfuse3 is tested where it shows: the ENODEV of shared mappings in
``cache=none`` (test_modes, test_cli), two requests per buffered write (test_privileges),
the max_background warning without root (test_nonroot), passthrough refused
(test_passthrough).
"""

from __future__ import annotations

import inspect
import os

import pytest

from . import test_transport
from .conftest import collected_again, repeat_over

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")


@pytest.fixture
def mount_transport() -> str:
    """Every mount of this module goes over the pyfuse3 transport."""
    return "pyfuse3"


# Collected here a second time: this module's mounts are pyfuse3 mounts.
for _name in [name for name in dir(test_transport) if name.startswith("test_posix_")]:
    _test = inspect.unwrap(getattr(test_transport, _name))
    globals()[_name] = collected_again(_test, repeat_over("pyfuse3"))
test_fio_verify = collected_again(test_transport.fio_verify, repeat_over("pyfuse3"))


@repeat_over("pyfuse3")
def test_state_machine_over_pyfuse3() -> None:
    """The differential state machine (test_differential) on a pyfuse3 mount."""
    test_transport.run_machine_over("pyfuse3")
