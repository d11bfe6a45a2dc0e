"""Types of the compiled data path (module.c)."""

from collections.abc import Sequence

Buffer = bytes | bytearray | memoryview

TAG_SIZE: int
AD_MAX: int

def reseal(
    *,
    disc_key: Buffer,
    disc_ad: Buffer,
    hdd_key: Buffer,
    hdd_ad: Buffer,
    size: int,
    chunk_size: int,
    block_shift: int,
    first: int,
    count: int,
    sealed: Buffer,
    data: Buffer,
    tags: Buffer,
) -> int: ...
def sanitized() -> bool: ...
def gcm_seal(key: Buffer, nonce: Buffer, ad: Buffer, data: Buffer) -> bytes: ...
def gcm_open(key: Buffer, nonce: Buffer, ad: Buffer, data: Buffer) -> bytes: ...

class Mount:
    def __init__(
        self,
        image_fd: int,
        nominal_size: int,
        nodes: Sequence[tuple[int, bytes, int, int, bool, bool]],
        files: Sequence[tuple[int, int, Sequence[tuple[int, int]], Buffer, bytes, str]],
    ) -> None: ...
    def start(self, mountpoint: str, options: str, threads: int) -> None: ...
    def wait(self, timeout: float, /) -> bool: ...
    def revoke(self) -> None: ...
    def invalidate(self) -> None: ...
    def stop(self) -> None: ...
