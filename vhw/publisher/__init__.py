"""The publisher's side: :mod:`.mastering` (master a title into an encrypted disc image, press
discs with their MIDs) and :mod:`.keystore` (the publisher's Content-Keys)."""

__all__ = ["keystore", "mastering"]
