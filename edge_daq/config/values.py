"""Paths and host names as technicians write them, refused at load time if the OS or the resolver would refuse them.

A NUL byte or a file name longer than the OS allows made ``open`` or ``mkdir`` raise deep inside a running
daemon, and a host name with an over-long or empty label made the resolver raise ``UnicodeError`` instead of a
connection error; these types turn both into configuration errors at the key.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

NAME_MAX = 255
"""Bytes in one file or folder name (Linux, and the file systems it mounts)."""
PATH_MAX = 4096
"""Bytes in a whole path, with the NUL that ends it."""
HOST_MAX = 253
"""Characters in a DNS host name."""


def check_path_text(text: str) -> str:
    """``text`` if the OS can open it as a path; a ValueError that does not quote it (it may be a secret) if not."""
    if "\0" in text:
        raise ValueError("a path cannot contain a NUL character")
    try:
        encoded = os.fsencode(text)
    except UnicodeEncodeError:
        raise ValueError("a path must be valid text (it contains a lone surrogate escape)") from None
    if len(encoded) >= PATH_MAX:
        raise ValueError(f"a path must be shorter than {PATH_MAX} bytes, this one has {len(encoded)}")
    longest = max(len(part) for part in encoded.split(b"/"))
    if longest > NAME_MAX:
        raise ValueError(f"a file or folder name must be at most {NAME_MAX} bytes, one here has {longest}")
    return text


def _check_path(value: object) -> object:
    if isinstance(value, str | PurePath):
        check_path_text(str(value))
    return value  # anything else: pydantic's own type error


def check_host(host: str) -> str:
    """``host`` if the resolver takes it (a name, an IPv4 or an IPv6 address); a ValueError if not."""
    if not host:
        raise ValueError("a host name cannot be empty")
    if any(character.isspace() or not character.isprintable() for character in host):
        raise ValueError("a host name cannot contain spaces or control characters")
    if len(host) > HOST_MAX:
        raise ValueError(f"a host name must be at most {HOST_MAX} characters, this one has {len(host)}")
    try:
        host.encode("idna")  # what the resolver does first; it fails on an empty or over-long (> 63) label
    except UnicodeError:
        raise ValueError("not a valid host name: each dot-separated part must have 1 to 63 characters") from None
    return host


def check_login(username: str | None, password: object, password_file: object) -> None:
    """A password from one place, the file or the config, and only with the user name it belongs to."""
    if password is not None and password_file is not None:
        raise ValueError("give password or password_file, not both")
    if (password is not None or password_file is not None) and username is None:
        raise ValueError("a password needs a username")


ConfigPath = Annotated[Path, BeforeValidator(_check_path)]
"""A file or folder path: no NUL, every name at most 255 bytes, the whole under 4096 bytes."""

DevicePath = Annotated[str, AfterValidator(check_path_text)]
"""A device path kept as text (a serial port such as ``/dev/ttyUSB0``), with the same limits as a path."""

HostName = Annotated[str, AfterValidator(check_host)]
"""A host name or an IP address that the resolver accepts."""
