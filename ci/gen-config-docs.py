#!/usr/bin/env python3
"""Regenerate what is derived from the config models (and other copies shipped in the wheel).

* the generated blocks of docs/configuration.md (profiles and key reference tables)
* config/secretivex.schema.json (same as `secretivex config schema`) and its copy in
  the package
* secretivex/units/: copies of packaging/systemd for `secretivex install-units --user`
* secretivex/bench/report.schema.json, generated from the bench report's pydantic model

Usage:
    ci/gen-config-docs.py            # rewrite stale files
    ci/gen-config-docs.py --check    # exit 1 and name stale files, change nothing
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # works from a checkout without an install

from secretivex.bench.report import render_report_schema  # noqa: E402
from secretivex.config.docs import update_document  # noqa: E402
from secretivex.config.schema import render_schema  # noqa: E402

def _unit(name: str) -> str:
    return (ROOT / "packaging" / "systemd" / "user" / name).read_text(encoding="utf-8")


TARGETS: dict[Path, Callable[[str], str]] = {
    ROOT / "docs" / "configuration.md": update_document,
    ROOT / "config" / "secretivex.schema.json": lambda _old: render_schema(),
    # The copy shipped in the wheel (`secretivex config schema --path`).
    ROOT / "secretivex" / "config" / "secretivex.schema.json": lambda _old: render_schema(),
    # The user units `secretivex install-units --user` installs, shipped in the wheel.
    ROOT / "secretivex" / "units" / "secretivex.socket": lambda _old: _unit("secretivex.socket"),
    ROOT / "secretivex" / "units" / "secretivex.service": lambda _old: _unit("secretivex.service"),
    ROOT / "secretivex" / "bench" / "report.schema.json": lambda _old: render_report_schema(),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    stale = []
    for path, render in TARGETS.items():
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        new = render(old)
        if new != old:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in stale:
        verb = "stale" if args.check else "updated"
        print(f"{verb}: {path.relative_to(ROOT)}")
    if args.check and stale:
        print("run: python ci/gen-config-docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
