"""vhw: media-bound, device-bound content licensing, carried out for real.

A virtual game console whose devices are files (console ROM, memory card, HDD image, disc image)
and the licensing service behind it, after the copy-management system of US patent application
"Computer Program Copy Management System" (JP 2001-044358): a disc installs onto a hard disk once,
for its registered owner, and what is installed plays only on that owner's console and hard disk.

The pure parts, free of I/O, at the bottom (tests/test_layers.py keeps imports running down):

- :mod:`.errors`: every error a person sees, and its exit code; :mod:`.ids`: labelled IDs;
  :mod:`.roles`: the roles of credentials; :mod:`.plans`: changes to device files as writes and barriers;
- :mod:`.crypto`: every primitive, on pyca/cryptography; :mod:`.pki`: the platform's certificates;
  :mod:`.protocol`: the licensing messages;
- :mod:`.formats`: the device files' bytes; :mod:`.stores`: the card's and the HDD's stores;
  :mod:`.bindings`: what every wrapped key is bound to; :mod:`.saves`: game saves sealed and opened;
  :mod:`.samples`: the sample titles.

Then the shells and the sides:

- :mod:`.devices`: the device files (handles, locks, atomic writes); :mod:`.datapath`: the compiled
  data path (the mount's read path, the install's crypto); :mod:`.lifetime`: child processes that
  end with the process that started them;
- :mod:`.httpapi`: what the server and the broker share of HTTP; :mod:`.client`: their client;
- :mod:`.console`, :mod:`.publisher`, :mod:`.server`, :mod:`.broker`, :mod:`.webconsole`: each side;
- :mod:`.cli`: the ``vhw`` command; :mod:`.demo`: ``vhw demo``.
"""

__version__ = "0.1.0"
