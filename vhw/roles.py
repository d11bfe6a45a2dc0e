"""The roles a licensing server issues credentials for; each can do only its own work."""

ROLES = ("manufacturer", "publisher", "operator", "broker")
