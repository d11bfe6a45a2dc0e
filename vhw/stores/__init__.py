"""The two writable devices' stores, without I/O: what is kept, and every change as a plan.

The memory card and the HDD image are one kind of store (:mod:`.ditto`): two superblock slots
that generations alternate between, each slot kept twice, and a catalog kept twice; a commit is a
plan (:mod:`vhw.plans`) that writes the next catalog where the current one is not, then the next
superblock into the other slot, copy by copy, with a sync between each; opening picks the newest
generation whose superblock and catalog check, and says what it repaired from a ditto copy and
what it could not. What each device keeps in its catalog is its own:

- :mod:`.ditto`: the store both share: the current generation, notes and damage, the commit (its
  bytes: :mod:`vhw.formats.ditto`);
- :mod:`.card`: the memory card's licensing items and its save area;
- :mod:`.hdd`: the HDD's installed titles, their files' extents and checksums.

:mod:`vhw.devices` applies the plans to the files.
"""

__all__ = ["card", "ditto", "hdd"]
