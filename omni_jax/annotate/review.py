"""The human review (HRE, §3.2): a sheet of clips for people to check, and its import.

`write_sheet(DIR, DIR/review.csv, per_source=700, seed=0)` draws, as the paper did, `per_source`
clips at random from each source dataset's clips that are not among the kept SRE ones (seeded:
the same draw every time), and writes one row per clip: what a reviewer needs (the clip's path,
a preview PNG under DIR/review/, the label, the generated reason, emotion words and intensity
where the reviewer model wrote them) and the columns to fill: `decision` (accept, fix or reject),
`fixed_reason`, `fixed_emotions` (separated by ";" or ","), `fixed_intensity` (1-5), `note`.

`import_sheet(DIR, sheet)` reads it back: every filled row is checked first (a malformed one is
an error naming its line, and nothing is changed), then each reviewed record gets
`human_review` {decision, reason, emotions, intensity, note} — a fix keeps the generated
values it does not replace — and the records and manifests are rewritten. Rows left undecided
are pending. Importing the same sheet twice changes nothing.
"""
from __future__ import annotations

import collections
import csv
import os
from pathlib import Path
from typing import Any

import cv2
import ml_collections
import numpy as np

from omni_jax.annotate import outputs
from omni_jax.annotate.media import fit
from omni_jax.annotate.outputs import RECORDS, read_records
from omni_jax.data import video
from omni_jax.data.errors import ExampleError
from omni_jax.errors import InputError, MissingInputError, OutputExistsError
from omni_jax.process_files import write_jsonl

COLUMNS = ("line", "id", "source", "label", "clip", "preview", "reason", "emotions", "intensity",
           "decision", "fixed_reason", "fixed_emotions", "fixed_intensity", "note")
DECISIONS = ("accept", "fix", "reject")
PREVIEW_FRAMES, PREVIEW_HEIGHT = 4, 180


def drawn(records: list[dict[str, Any]], per_source: int, seed: int) -> list[dict[str, Any]]:
    """`per_source` records at random (seeded) from each source's readable clips that were not
    kept, in manifest order."""
    candidates = collections.defaultdict(list)
    for r in records:
        if r["status"] in ("discarded", "failed"):
            candidates[r["source"]].append(r)
    rng = np.random.default_rng(seed)
    chosen = []
    for source in sorted(candidates):
        pool = candidates[source]
        chosen += [pool[i] for i in sorted(rng.choice(len(pool), min(per_source, len(pool)), replace=False))]
    return sorted(chosen, key=lambda r: r["line"])


def preview(path: str, out: Path) -> str:
    """A PNG strip of PREVIEW_FRAMES frames of the clip at `path` (written to `out`); "" if it cannot be read."""
    try:
        frames = video.load_frames(path, PREVIEW_FRAMES).frames
    except ExampleError:
        return ""
    strip = np.concatenate([fit(f, PREVIEW_HEIGHT * max(f.shape[:2]) // f.shape[0]) for f in frames], axis=1)
    cv2.imwrite(str(out), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    return str(out)


def write_sheet(out: str | os.PathLike, sheet: str | os.PathLike, per_source: int = 700, seed: int = 0
                ) -> dict[str, Any]:
    """The review sheet (module docstring); returns the rows per source."""
    out, sheet = Path(out), Path(sheet)
    records = read_records(out)
    if not records:
        raise MissingInputError(f"{out / RECORDS}: no records to draw from (run omni-jax annotate first)")
    if sheet.exists():
        raise OutputExistsError(f"{sheet} already exists; choose a new sheet (importing it again changes nothing)")
    previews = out / "review"
    previews.mkdir(exist_ok=True)
    rows = []
    for r in drawn(records, per_source, seed):
        generated = r.get("review", {})
        rows.append({"line": r["line"], "id": r["id"], "source": r["source"], "label": r["label"], "clip": r["video"],
                     "preview": preview(r["video"], previews / f"{r['line']:06d}.png"),
                     "reason": generated.get("reason", ""), "emotions": "; ".join(generated.get("emotions", [])),
                     "intensity": generated.get("intensity", "")})
    tmp = sheet.with_name(f".{sheet.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, sheet)
    return {"sheet": str(sheet), "rows": len(rows), "by_source": dict(collections.Counter(r["source"] for r in rows))}


def _words(text: str) -> list[str]:
    return list(dict.fromkeys(w.strip().lower() for w in text.replace(";", ",").split(",") if w.strip()))


def _reviewed(row: dict[str, str], record: dict[str, Any], where: str) -> dict[str, Any]:
    """The human_review of one decided row; raises InputError naming `where`."""
    decision = row["decision"].strip().lower()
    if decision not in DECISIONS:
        raise InputError(f"{where}: decision must be one of {DECISIONS} (or empty: not reviewed yet), got "
                         f"{row['decision']!r}")
    generated = record.get("review", {})
    review = {"decision": decision, "reason": generated.get("reason"), "emotions": generated.get("emotions"),
              "intensity": generated.get("intensity"), "note": row["note"].strip()}
    if decision == "fix":
        fixes = {k: row[f"fixed_{k}"].strip() for k in ("reason", "emotions", "intensity")}
        if not any(fixes.values()):
            raise InputError(f"{where}: decision fix needs fixed_reason, fixed_emotions or fixed_intensity")
        if fixes["intensity"] and fixes["intensity"] not in ("1", "2", "3", "4", "5"):
            raise InputError(f"{where}: fixed_intensity must be a whole number from 1 to 5, got "
                             f"{row['fixed_intensity']!r}")
        review.update({"reason": fixes["reason"] or review["reason"],
                       "emotions": _words(fixes["emotions"]) or review["emotions"],
                       "intensity": int(fixes["intensity"]) if fixes["intensity"] else review["intensity"]})
    if decision != "reject":
        missing = [k for k in ("reason", "emotions", "intensity") if not review[k]]
        if missing:
            raise InputError(f"{where}: decision {decision} leaves no {', '.join(missing)} (this clip has no generated "
                             f"one): give fixed_{missing[0]}")
    return review


def import_sheet(out: str | os.PathLike, sheet: str | os.PathLike, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Applies a filled review sheet to DIR's records (module docstring); returns the decisions
    counted and the new counts."""
    out, sheet = Path(out), Path(sheet)
    records = read_records(out)
    if not records:
        raise MissingInputError(f"{out / RECORDS}: no records to review (the sheet's folder, or --out, holds them)")
    if not sheet.exists():
        raise MissingInputError(f"{sheet}: no such review sheet")
    by_line = {r["line"]: r for r in records}
    reviews, decided = {}, collections.Counter()
    with sheet.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{sheet}: the header lacks the columns {missing} (expected {list(COLUMNS)})")
        for row in reader:
            where = f"{sheet}:{reader.line_num}"
            if None in row.values() or None in row:
                raise InputError(f"{where}: expected {len(reader.fieldnames)} fields, the row has another number")
            if not row["decision"].strip():
                decided["pending"] += 1
                continue
            record = by_line.get(int(row["line"])) if row["line"].strip().isdigit() else None
            if record is None or record.get("id") != row["id"]:
                raise InputError(f"{where}: no record of clip {row['id']!r} at manifest line {row['line']!r} in "
                                 f"{out / RECORDS}")
            reviews[record["line"]] = _reviewed(row, record, where)
            decided[reviews[record["line"]]["decision"]] += 1
    updated = [{**r, "human_review": reviews[r["line"]]} if r["line"] in reviews else r for r in records]
    write_jsonl(out / RECORDS, updated)
    return {"decisions": dict(sorted(decided.items())), **outputs.write_outputs(updated, out, cfg)}
