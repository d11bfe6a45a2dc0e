"""Device files: the thin I/O shells around :mod:`vhw.formats` and :mod:`vhw.stores`.

- :mod:`.rom`: the console ROM; :mod:`.disc`: disc images; :mod:`.card`: memory cards (and an
  HDD's internal memory); :mod:`.hdd`: HDD images;
- :mod:`.files`: what they share: reading with clear errors, atomic writes, locks, the executor of plans;
- :mod:`.holders`: who holds a device's lock, noted beside it, so a wait says who.
"""

__all__ = ["card", "disc", "files", "hdd", "holders", "rom"]
