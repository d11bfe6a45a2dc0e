"""vhw: media-bound, device-bound content licensing, carried out for real.

A virtual game console whose devices are files (console ROM, memory card, HDD image, disc image)
and the licensing service behind it, after the copy-management system of US patent application
"Computer Program Copy Management System" (JP 2001-044358): a disc installs onto a hard disk once,
for its registered owner, and what is installed plays only on that owner's console and hard disk.

Layout: pure parts (``ids``, ``crypto``, ``formats``, ``volume``, ``protocol``, ``licensing``)
do no I/O; ``devices``, ``server``, ``client``, ``mount`` and ``cli`` are thin shells around them.
"""

__version__ = "0.1.0"
