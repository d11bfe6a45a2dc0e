"""The console's side: what runs on the user's machine.

- :mod:`.decisions`: what the console decides in each flow (pure: card views, the copy and play checks);
- :mod:`.install`: the copy, S24-S26, as a plan generator (pure);
- :mod:`.machine`: the emulated console: slots, tray, the flows over the device files and the server;
  the copy (S21-S28) is :mod:`.copying`, playing a title (S35) :mod:`.playing`, what both see of
  the hardware and the disc :mod:`.media`;
- :mod:`.mount`: the decrypting, read-only file system of the HDD (S31-S35): Python lays out the
  tree and derives the keys, the compiled data path (:mod:`vhw.datapath`) serves it;
- :mod:`.savefs`: the running title's save folder, a pyfuse3 view of the card's saves;
- :mod:`.fuseloop`: serving a pyfuse3 file system (the save folder) until unmounted or signalled;
- :mod:`.mountpoints`: lifting dead mounts, raising readahead and unmounting, without FUSE;
- :mod:`.slots`: the console's folder: its configuration, card slots and disc tray; :mod:`.modem`:
  how it reaches its server or broker, and the broker account it signs in with;
- :mod:`.sandbox`: the bubblewrap sandbox a title runs in, and its seccomp filter;
- :mod:`.processes`: spawned mounts, their parents and who is alive.
"""

__all__ = ["decisions", "machine", "mountpoints", "processes"]
