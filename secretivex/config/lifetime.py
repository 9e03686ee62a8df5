"""OpenSSH's time format (``ssh-agent -t``, ``ssh-add -t``): ``90``, ``1h30m``, ``2d``.

One parser for the ``-t`` flag and ``agent.default_lifetime`` so both accept what
ssh-agent users already type.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+)([smhdw]?)", re.IGNORECASE)
#: ssh-agent caps lifetimes at INT_MAX seconds; so do we.
MAX_LIFETIME_S = 2**31 - 1


def parse_lifetime(value: str | int) -> int:
    """Seconds for ``value``; 0 means "no default lifetime". Raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError("a lifetime is a number of seconds or a time like 1h30m")
    if isinstance(value, int):
        seconds = value
    else:
        text = value.strip()
        if not text:
            raise ValueError("empty lifetime")
        seconds, pos = 0, 0
        while pos < len(text):
            match = _PART.match(text, pos)
            if match is None:
                raise ValueError(
                    f"lifetime {value!r} is not a time like 600, 10m or 1h30m (units s, m, h, d, w)"
                )
            seconds += int(match.group(1)) * _UNITS[match.group(2).lower()]
            pos = match.end()
    if seconds < 0 or seconds > MAX_LIFETIME_S:
        raise ValueError(f"lifetime {value!r} is out of range (0 to {MAX_LIFETIME_S} s)")
    return seconds
