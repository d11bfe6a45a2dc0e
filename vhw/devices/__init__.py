"""Device files: the thin I/O shells around :mod:`vhw.formats` (file handles, locks, atomic writes)."""
