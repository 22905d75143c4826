"""Numbers for people: durations (12s, 1m05s, 2h03m07s), byte sizes and large counts. The one place for them,
in the lowest layer that shows them (the runs table); training/ uses them too."""

from __future__ import annotations

GB = 10**9


def duration(seconds: float) -> str:
    """12s, 1m05s, 2h03m07s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def size(n: int, binary: bool = False) -> str:
    """Bytes: in decimal units, as memory is spoken of (12 MB, 3.4 GB, 1.20e+12 GB), or `binary` as files on disk
    are listed (512 B, 1.5 KiB, 2.0 MiB, 3.1 GiB)."""
    if binary:
        value = float(n)
        for unit in ("B", "KiB", "MiB"):
            if value < 1024:
                return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1024
        return f"{value:.1f} GiB"
    if n < GB // 10:
        return f"{n / 10**6:.0f} MB"
    if n < 10**6 * GB:
        return f"{n / GB:,.1f} GB"
    from decimal import Decimal

    return f"{Decimal(n) / GB:.2e} GB"


def count(n: int) -> str:
    """1,234,567; past 10^15 in scientific notation (exactly, however large)."""
    if n < 10**15:
        return f"{n:,}"
    from decimal import Decimal

    return f"{Decimal(n):.2e}"
