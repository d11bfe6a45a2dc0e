"""Binary formats of the four devices, declared with construct. Pure: bytes in, objects out.

- :mod:`.rom`: the console ROM; :mod:`.disc`: disc images (header, MID area, manifest, chunks);
  :mod:`.card`: memory cards; :mod:`.hdd`: HDD images;
- :mod:`.ditto`: the superblock slots and catalogs the card and the HDD keep twice;
- :mod:`.common`: what every format shares (IDs, envelopes, checked blocks, records, extents).
"""

__all__ = ["card", "common", "disc", "ditto", "hdd", "rom"]
