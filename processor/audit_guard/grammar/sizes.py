"""Size strings, one named grammar per tool: what `16KB` means depends on who reads it.

Each tool's own parser decides what a size in its configuration means, and they disagree:

| grammar             | units                                 | case        | number           |
|---------------------|---------------------------------------|-------------|------------------|
| NGINX_SIZE          | none, k, m: 1024-based                | k/K, m/M    | decimal digits   |
| DOCKER_MAX_SIZE     | none, b, k..p (+b, +ib): 1000-based   | any         | decimal, `1.5`   |
| LOGROTATE_SIZE      | none, k/K, M, G: 1024-based           | M, G upper  | C strtoul base 0 |
| COLLECTOR_BYTE_SIZE | none, kb..pb 1000, kib..pib 1024      | `i` lower   | float32          |

Sources (checked against the tools where they run here — nginx 1.22 `nginx -t`, logrotate 3.21
`logrotate -d` — and against the code where they do not):
- nginx "Measurement units" (https://nginx.org/en/docs/syntax.html): "Sizes can be specified
  in bytes, kilobytes (suffixes k and K) or megabytes (suffixes m and M)" — ngx_parse_size;
  `1g`, `8kb`, `1.5k` are refused (g/G is for offsets only).
- Docker json-file `max-size` (https://docs.docker.com/engine/logging/drivers/json-file/):
  "a positive integer plus a modifier representing the unit of measure (k, m, or g)"; the
  daemon reads it with go-units `FromHumanSize` (moby daemon/logger/jsonfilelog), which is
  decimal: `10m` is 10,000,000 bytes and even `16KiB` is 16,000.
- logrotate(8) `size`/`maxsize`/`minsize`: "If size is followed by k, the size is assumed to
  be in kilobytes. If the M is used, the size is in megabytes, and if G is used, the size is
  in gigabytes"; `K` is accepted too, `m`/`g`/`KB` are "unknown unit", and the number goes
  through strtoul(…, 0): `0x10` is 16, `010` is 8, `1.5M` is a "bad size", `k` alone is 0.
- OpenTelemetry Collector stanza `max_log_size` and friends (pkg/stanza/operator/helper
  `ByteSize`): `^([0-9]+\\.?[0-9]*)\\s*([kKmMgGtTpP]i?[bB])?$`, KB = 1000 and KiB = 1024, the
  number parsed as a float32; `16k` (no `b`) is invalid.

`parse` returns the bytes the tool would use, or None where the tool refuses the text.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "COLLECTOR_BYTE_SIZE",
    "DOCKER_MAX_SIZE",
    "GRAMMARS",
    "LOGROTATE_SIZE",
    "NGINX_SIZE",
    "SizeGrammar",
]


@dataclass(frozen=True)
class SizeGrammar:
    """How one tool reads a size: `number`, then `separator`, then a unit of `units`."""

    tool: str
    units: Mapping[str, int]  # unit as the tool accepts it (lowercase if not case_sensitive)
    case_sensitive: bool
    number: str  # regex of the number
    to_number: Callable[[str], float | int]
    separator: str = ""  # regex allowed between number and unit
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        units = "|".join(re.escape(u) for u in sorted(self.units, key=len, reverse=True) if u)
        pattern = f"({self.number}){self.separator}({units})?"
        object.__setattr__(self, "_regex", re.compile(
            pattern, re.ASCII | (0 if self.case_sensitive else re.IGNORECASE)))

    def parse(self, text: str) -> int | None:
        """Bytes, or None when the tool would refuse `text`."""
        m = self._regex.fullmatch(text)
        if m is None:
            return None
        try:
            number = self.to_number(m.group(1))
        except ValueError:
            return None
        unit = m.group(2) or ""
        return int(number * self.units[unit if self.case_sensitive else unit.lower()])


def _strtoul_base0(digits: str) -> int:
    """C strtoul(s, &end, 0): 0x… hex, 0… octal, else decimal; "" is 0."""
    if not digits:
        return 0
    if digits[:2] in ("0x", "0X"):
        return int(digits[2:], 16)
    if len(digits) > 1 and digits[0] == "0":
        return int(digits[1:], 8)  # ValueError on 8/9: strtoul stops there, logrotate refuses
    return int(digits)


def _float32(digits: str) -> float:
    """Go strconv.ParseFloat(s, 32): the value rounded to a float32."""
    value: float = struct.unpack("f", struct.pack("f", float(digits)))[0]
    return value


_KIB = 1024
_KB = 1000

NGINX_SIZE = SizeGrammar(
    tool="nginx", units={"": 1, "k": _KIB, "m": _KIB**2}, case_sensitive=False,
    number=r"[0-9]+", to_number=int,
)

DOCKER_MAX_SIZE = SizeGrammar(
    tool="docker json-file max-size",
    units={"": 1, "b": 1} | {
        prefix + suffix: _KB ** power
        for power, prefix in enumerate("kmgtp", 1) for suffix in ("", "b", "ib")
    },
    case_sensitive=False, number=r"[0-9]+(?:\.[0-9]+)?", separator=" ?", to_number=float,
)

LOGROTATE_SIZE = SizeGrammar(
    tool="logrotate", units={"": 1, "k": _KIB, "K": _KIB, "M": _KIB**2, "G": _KIB**3},
    # A unit alone ("k") is 0: logrotate strips the unit and strtoul("") is 0 with nothing left.
    case_sensitive=True, number=r"0[xX][0-9a-fA-F]+|[0-9]+|(?=[kKMG]$)",
    to_number=_strtoul_base0,
)

COLLECTOR_BYTE_SIZE = SizeGrammar(
    tool="otel collector ByteSize",
    units={"": 1} | {
        letter + i + b: (_KIB if i else _KB) ** power
        for power, prefix in enumerate("kmgtp", 1) for letter in (prefix, prefix.upper())
        for i in ("", "i") for b in ("b", "B")
    },
    case_sensitive=True, number=r"[0-9]+\.?[0-9]*", separator=r"\s*", to_number=_float32,
)

GRAMMARS: dict[str, SizeGrammar] = {
    "nginx": NGINX_SIZE,
    "docker": DOCKER_MAX_SIZE,
    "logrotate": LOGROTATE_SIZE,
    "collector": COLLECTOR_BYTE_SIZE,
}
