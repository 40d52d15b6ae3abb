"""Numbers as people read them in plans and reports."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """Seconds as '42 s', '12.5 min' or '3.20 h'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def human(x: float, unit: str = "") -> str:
    """1.23e18 -> '1.23E' style with SI suffixes; keeps tables readable."""
    for factor, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def time_unit(span_seconds: float) -> tuple[float, str]:
    """(seconds per unit, unit name) for a time axis that spans `span_seconds`: seconds up to 2 minutes, minutes
    up to 2 hours, hours beyond, so that a 2-minute run is not drawn as 0.000-0.035 hours."""
    if span_seconds <= 120:
        return 1.0, "seconds"
    return (60.0, "minutes") if span_seconds <= 7200 else (3600.0, "hours")
