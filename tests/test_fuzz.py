"""Every parser and API message under hypothesis: random bytes, and valid inputs mutated.

A bounded number of examples per target, so the suite stays quick; tools/fuzz/fuzz.py runs the
same targets coverage-guided (atheris) for millions of inputs.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import fuzz_targets as ft


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return ft.seeds(tmp_path_factory.mktemp("seeds"))


def mutated(seed: bytes):
    """A valid input with a few bytes flipped, inserted, deleted or the tail cut."""

    def apply(ops):
        data = bytearray(seed)
        for kind, pos, value in ops:
            if not data:
                break
            pos %= len(data)
            if kind == 0:
                data[pos] ^= value or 1
            elif kind == 1:
                data.insert(pos, value)
            elif kind == 2:
                del data[pos]
            else:
                del data[pos:]
        return bytes(data)

    return st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=4
    ).map(apply)


@pytest.mark.parametrize("name", sorted(ft.TARGETS))
def test_target_never_fails_unclearly(name, seeds):
    target = ft.TARGETS[name]
    seed = seeds[name][0]
    # the seed itself decodes (and re-encodes to the same bytes where the format allows); an API
    # seed's message decodes, whatever the licensing service then answers
    if name in ft.IMAGES:
        assert ft.run(target, seed) == "accepted", name
        if name in ft.REENCODED:
            assert target(seed) == seed, f"{name}: the seed does not re-encode to its own bytes"
    else:
        import json

        from vhw import protocol as p

        assert p.decode(ft.API_MESSAGES[name], json.loads(seed))

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(st.binary(max_size=2048), mutated(seed)))
    def fuzz(data):
        assert ft.run(target, data) in ("accepted", "refused")

    fuzz()
