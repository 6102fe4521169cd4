"""The control protocol's encoding of a write sent as a read (read-only mounts), on both
sides: what a client builds (`read_only_request`) the daemon takes apart
(`write_in_read`) into the same attribute and value, and nothing else is taken for one.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from iofs.control_protocol import (
    CONTROL_SEPARATOR,
    CONTROL_XATTRS,
    STATISTICS_XATTR,
    WRITABLE_XATTRS,
    read_only_request,
    write_in_read,
)

values = st.binary(max_size=300)


@given(name=st.sampled_from(sorted(WRITABLE_XATTRS)), value=values)
def test_a_write_sent_as_a_read_arrives_whole(name: bytes, value: bytes) -> None:
    assert write_in_read(read_only_request(name, value)) == (name, value)


@given(value=values)
def test_the_statistics_take_no_write(value: bytes) -> None:
    assert write_in_read(read_only_request(STATISTICS_XATTR, value)) is None


@given(name=st.binary(max_size=40))
def test_other_names_are_no_control_writes(name: bytes) -> None:
    control = name.partition(CONTROL_SEPARATOR)[0]
    if control not in WRITABLE_XATTRS:
        assert write_in_read(name) is None


def test_a_plain_control_name_is_a_read() -> None:
    for name in CONTROL_XATTRS:
        assert write_in_read(name) is None
