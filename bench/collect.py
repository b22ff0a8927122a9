"""Merge bench JSON lines into one result file per run and device, and print README's performance table.

    python bench/collect.py PART.json... --output=DIR     # writes DIR/<date>-<device>.json
    python bench/collect.py --table [bench/results]       # a markdown table of every result file there

A merged file is one JSON object: ``date``, ``device``, ``platform``, ``jax`` and ``runs`` (the bench lines as
printed). ``--table`` reads merged files and single bench lines alike, one row per bench line.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
from typing import Any

# Per bench: the figures the table shows, in order (others stay in the files).
TABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "clip_vs_torch": ("ratio_image", "ratio_text_b8", "ratio_text_b32", "max_abs_err_image", "max_abs_err_text_b32"),
    "tcm_vs_torch": (
        "ratio_tcm_640",
        "ratio_fasttcm_cached_640",
        "ratio_tcm_1024x1824",
        "ratio_fasttcm_cached_1024x1824",
        "fast_over_tcm_1024x1824",
    ),
    "testr": (
        "train_img_per_s",
        "infer_fps",
        "infer_fasttcm_cached_fps",
        "infer_fasttcm_uncached_fps",
        "infer_tcm_fps",
    ),
    "testr_ablation": ("steps", "testr", "testr_fasttcm"),
    "fasttcm": (
        "head",
        "dtype",
        "train_batch",
        "fasttcm_train_img_per_s",
        "fasttcm_train_mfu",
        "fasttcm_train_step_gib_per_device",
        "fasttcm_infer_fps",
        "tcm_infer_fps",
        "fasttcm_over_tcm_fps",
    ),
    "dptr_speed": (
        "dtype",
        "batch",
        "pretrain_samples_per_s",
        "pretrain_cached_samples_per_s",
        "finetune_samples_per_s",
        "pretrain_mfu",
    ),
    "spot": ("models", "images_per_s"),
    "data_pipeline": ("det_total_per_s", "rec_total_per_s", "det_iter_2_workers_per_s"),
}


def _figure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def read_lines(path: str) -> list[dict[str, Any]]:
    """The bench lines of ``path``: a merged file's ``runs``, or the JSON line(s) of one bench."""
    with open(path) as f:
        text = f.read().strip()
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return record["runs"] if "runs" in record else [record]


def merge(paths: list[str], output_dir: str) -> str:
    """Write the bench lines of ``paths`` as one ``<date>-<device>.json`` under ``output_dir``; returns its path."""
    runs = [run for p in paths for run in read_lines(p)]
    if not runs:
        raise ValueError("no bench lines to merge")
    first = runs[0]
    date = datetime.date.today().isoformat()
    device = re.sub(r"[^A-Za-z0-9]+", "-", str(first.get("device", "unknown"))).strip("-").lower()
    record = {"date": date, "device": first.get("device"), "platform": first.get("platform"), "jax": first.get("jax")}
    path = os.path.join(output_dir, f"{date}-{device}.json")
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({**record, "runs": runs}, f, indent=1)
        f.write("\n")
    return path


def table(folder: str) -> str:
    """Markdown rows (file, device, bench, figures) of every bench line in ``folder``'s ``*.json``."""
    rows = ["| file | device | bench | figures |", "|---|---|---|---|"]
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        for run in read_lines(path):
            name = run.get("bench") or run.get("benchmark", "?")
            fields = TABLE_FIELDS.get(name)
            if fields is None:
                continue
            figures = ", ".join(f"{k} {_figure(run[k])}" for k in fields if run.get(k) is not None)
            rows.append(f"| `{os.path.basename(path)}` | {run.get('device', '?')} | {name} | {figures} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--output", default="bench/results", help="folder for the merged file")
    ap.add_argument("--table", action="store_true", help="print the table of the folder given (or bench/results)")
    a = ap.parse_args()
    if a.table:
        print(table(a.paths[0] if a.paths else "bench/results"))
    else:
        print(merge(a.paths, a.output))


if __name__ == "__main__":
    main()
