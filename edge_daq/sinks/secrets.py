"""Secrets of the outputs: reading them from their files, and keeping them out of what the daemon shows.

A server may echo the request's ``Authorization`` header (or its URL) in an error body, and the daemon logs
such bodies and shows them in /status. :class:`Scrubber` removes from any text shown to people the configured
secrets themselves and whatever looks like a credential: ``Token x``, ``Bearer x``, ``Basic x``, an
``Authorization`` header value, ``u=``/``p=``/``password=``/``token=`` query values. Every output passes its
error texts through one.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import SecretStr

from edge_daq.errors import RetriableSinkError

MASK = "***"
MAX_SECRET_FILE = 64 * 1024
"""A token or password file is small: a larger one is most likely the wrong file."""
MAX_SCRUBBED_CHARS = 64 * 1024
"""Texts are cut to this length before scrubbing, so the patterns never run over unbounded input."""
_MIN_SECRET_CHARS = 3  # shorter "secrets" would mask ordinary words

_CREDENTIAL_PATTERNS = (
    # An Authorization (or Proxy-Authorization) header as echoed: the whole value, whatever its scheme.
    re.compile(r"""(?i)((?:proxy-)?authorization["']?\s*[:=]\s*["']?)[^"'\r\n,;}\]]+"""),
    # A scheme and a credential-like word (12 characters or more, so that "basic checks" stays readable).
    re.compile(r"(?i)\b(token|bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{12,}"),
    re.compile(r"""(?i)([?&;](?:u|p|password|passwd|pwd|token|access_token|api_key|apikey)=)[^&\s"'<>#]*"""),
)


class Scrubber:
    """Masks the given secrets, in clear and base64-encoded (as in basic auth), and any credential pattern."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None, *, username: str = "") -> None:
        """Mask ``secret`` from now on; with ``username``, also its basic-auth form ``base64(user:secret)``."""
        if not secret or len(secret) < _MIN_SECRET_CHARS:
            return
        forms = {secret, base64.b64encode(secret.encode()).decode()}
        if username:
            forms.add(base64.b64encode(f"{username}:{secret}".encode()).decode())
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = sorted(set(self._secrets) | forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = text[:MAX_SCRUBBED_CHARS]
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        for pattern in _CREDENTIAL_PATTERNS:
            text = pattern.sub(_keep_prefix, text)
        return text


def _keep_prefix(match: re.Match[str]) -> str:
    return "".join(group for group in match.groups() if group) + MASK


scrub_credentials = Scrubber()
"""The patterns alone, for texts where no configured secret is known."""


async def read_secret(value: SecretStr | None, path: Path | None, *, what: str = "secret file") -> str | None:
    """A token or password: from the config's SecretStr, or read from its file (trailing newline dropped).

    ``what`` names the key (``token_file``): an error names it and never the path, since a secret pasted into
    the key by mistake would otherwise be shown in the log and /status.
    """
    if path is None:
        return value.get_secret_value() if value is not None else None
    try:
        data = await asyncio.to_thread(_read_bounded, path)
    except OSError as error:
        # The file may appear later (systemd credentials, a mounted secret): retry rather than give up.
        reason = error.strerror or type(error).__name__
        raise RetriableSinkError(f"cannot read the file given as {what}: {reason}") from None
    if data is None:
        raise RetriableSinkError(f"the file given as {what} is over {MAX_SECRET_FILE // 1024} KiB: not a secret")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RetriableSinkError(f"the file given as {what} is not UTF-8 text") from None
    return text.rstrip("\r\n")


def _read_bounded(path: Path) -> bytes | None:
    with path.open("rb") as file:
        data = file.read(MAX_SECRET_FILE + 1)
    return None if len(data) > MAX_SECRET_FILE else data
