"""Writes one benchmark's section of bench/RESULTS.md, leaving the other sections as they are."""

from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


def write_section(name: str, text: str) -> None:
    marker = f"<!-- {name} -->"
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    before, _, rest = old.partition(marker)
    _, _, after = rest.partition(marker)
    RESULTS.write_text(f"{before.rstrip()}\n\n{marker}\n{text}{marker}\n\n{after.lstrip()}".rstrip() + "\n")
