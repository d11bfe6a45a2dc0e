"""How long the protocol codec takes per acquisition, against msgspec doing the same job.

    .venv/bin/python tools/bench_codec.py        (needs msgspec: pip install msgspec)

Decodes an acquisition request from its JSON body (strict: declared fields only, typed, IDs parsed
and checked, base64 with size bounds) and encodes an answer, the work the server does per request
in :mod:`vhw.protocol`; then the same with msgspec Structs (its own JSON decoder, with a hook for
IDs and the size bounds checked after). Medians of 5 runs of 20,000 requests each.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec

from vhw import crypto
from vhw import protocol as p
from vhw.ids import Id, IdKind

N = 20_000


def body() -> bytes:
    req = p.AcquireRequest(
        Id.random(IdKind.CARD),
        os.urandom(60),
        os.urandom(60),
        Id.random(IdKind.CLIENT),
        Id.random(IdKind.HDD),
        os.urandom(32),
        os.urandom(64),
    )
    return json.dumps(p.encode(req)).encode()


class MAcquire(msgspec.Struct, forbid_unknown_fields=True):
    mc_id: str
    user_id: bytes
    mid: bytes
    client_id: str
    hdd_id: str
    title_digest: bytes
    disc_proof: bytes | None


def msgspec_decode(data: bytes, decoder: msgspec.json.Decoder) -> MAcquire:
    m = decoder.decode(data)
    # what vhw.protocol checks besides the types: ID labels (check character, kind), size bounds
    Id.parse(m.mc_id, IdKind.CARD), Id.parse(m.client_id, IdKind.CLIENT), Id.parse(m.hdd_id, IdKind.HDD)
    if not (28 <= len(m.user_id) <= 128 and 28 <= len(m.mid) <= 128 and len(m.title_digest) == 32):
        raise ValueError("size")
    return m


def run(fn) -> float:
    start = time.perf_counter()
    for _ in range(N):
        fn()
    return (time.perf_counter() - start) / N * 1e6


def main() -> None:
    data = body()
    decoder = msgspec.json.Decoder(MAcquire)
    answer = p.Done(True)
    ours = [run(lambda: (p.decode(p.AcquireRequest, json.loads(data)), json.dumps(p.encode(answer)))) for _ in range(5)]
    theirs = [run(lambda: (msgspec_decode(data, decoder), msgspec.json.encode({"created": True}))) for _ in range(5)]
    for name, runs in (("vhw.protocol", ours), ("msgspec", theirs)):
        median = statistics.median(runs)
        print(f"{name:<13} median {median:.1f} us per request (min {min(runs):.1f}, max {max(runs):.1f})")
    print(f"ratio: {statistics.median(ours) / statistics.median(theirs):.2f}x  (crypto.KEY_SIZE={crypto.KEY_SIZE})")


if __name__ == "__main__":
    main()
