"""Binary formats of the four devices, declared with construct. Pure: bytes in, objects out."""
