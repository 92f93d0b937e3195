"""Sizes as people read them; shared by pgoctl's tables and the report."""


def human_bytes(count: int | float) -> str:
    """1536 → '1.5 KiB'; exact bytes below 1 KiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
