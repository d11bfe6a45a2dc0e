"""The console's side: what runs on the user's machine.

- :mod:`.decisions`: what the console decides in each flow (pure: card views, the copy and play checks);
- :mod:`.install`: the copy, S24-S26, as a plan generator (pure);
- :mod:`.machine`: the emulated console: slots, tray, the flows over the device files and the server;
- :mod:`.mount`: the decrypting, read-only pyfuse3 file system of the HDD (S31-S35);
- :mod:`.savefs`: the running title's save folder, a pyfuse3 view of the card's saves;
- :mod:`.mountpoints`: lifting dead mounts and unmounting, without FUSE.
"""
