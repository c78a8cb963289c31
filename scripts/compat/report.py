"""Writes benchmarks/results/compat.{md,json} from the logs of scripts/compat.sh."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
KEY = ("torch", "transformers", "accelerate", "sentence-transformers", "safetensors", "numpy",
       "scipy", "huggingface-hub", "tokenizers", "datasets", "pyarrow")


def freeze(path: Path) -> dict[str, str]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            m = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
            if m:
                out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def main() -> None:
    from benchmarks._harness import machine_info

    logs = Path(sys.argv[1])
    rows = {}
    for name in ("oldest", "newest"):
        log = logs / f"{name}.txt"
        if not log.is_file():
            continue
        lines = [x for x in log.read_text().splitlines() if x.strip()]
        summary = lines[-1] if lines else "no output"
        failed = [x.split(" ")[1] for x in lines if x.startswith("FAILED ")]
        versions = freeze(logs / f"{name}.freeze.txt")
        # (pytest -q prints no platform line: compat.sh writes `python -V` beside the log)
        pyfile = logs / f"{name}.python.txt"
        py = re.search(r"Python (\S+)", pyfile.read_text() if pyfile.is_file() else "")
        rows[name] = {"summary": summary, "failed": failed,
                      "passed": bool(re.search(r"\d+ passed", summary)) and not failed
                      and "error" not in summary,
                      "python": py.group(1) if py else None,
                      "versions": {k: versions.get(k) for k in KEY}}
    info = machine_info()
    out = {"machine": info, "sets": rows}
    res = ROOT / "benchmarks" / "results"
    (res / "compat.json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["# Compatibility: the suite on the oldest and the newest dependencies", "",
          f"Run {info['date']} on {info['cpu']} ({info['cores']} cores) by `bash scripts/compat.sh`.",
          "", "| package | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for k in KEY:
        md.append(f"| {k} | " + " | ".join(str(r['versions'][k]) for r in rows.values()) + " |")
    md.append("| Python | " + " | ".join(str(r["python"]) for r in rows.values()) + " |")
    md.append("| **suite** | " + " | ".join(
        ("pass: " if r["passed"] else "FAIL: ") + r["summary"].strip("= ") for r in rows.values())
        + " |")
    for name, r in rows.items():
        if r["failed"]:
            md += ["", f"Failed on {name}:", *[f"- `{t}`" for t in r["failed"]]]
    (res / "compat.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
