"""`diffsparse eval CANDIDATE [--reference REF] [--json OUT] [--weights-dir DIR]`: score videos offline.

CANDIDATE and REF are video files or folders; folders are matched by file name (every candidate
needs a reference of the same name). Prints the metric table and writes the JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import List, Optional, Tuple

from .metrics.video import VIDEO_EXTENSIONS


def _videos(folder: str) -> List[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(VIDEO_EXTENSIONS))


def pair_paths(candidate: str, reference: Optional[str]) -> Tuple[List[Tuple[str, Optional[str]]], List[str]]:
    """(candidate, reference) path pairs and their names; clear errors for anything unmatched."""
    if not os.path.exists(candidate):
        raise SystemExit(f"error: candidate {candidate!r} does not exist")
    if reference is not None and not os.path.exists(reference):
        raise SystemExit(f"error: reference {reference!r} does not exist")
    if os.path.isfile(candidate):
        if reference is not None and os.path.isdir(reference):
            raise SystemExit(f"error: candidate {candidate!r} is a file but reference {reference!r} is a folder")
        return [(candidate, reference)], [os.path.basename(candidate)]
    names = _videos(candidate)
    if not names:
        raise SystemExit(f"error: no videos ({', '.join(VIDEO_EXTENSIONS)}) in {candidate!r}")
    if reference is None:
        return [(os.path.join(candidate, n), None) for n in names], names
    if not os.path.isdir(reference):
        raise SystemExit(f"error: candidate {candidate!r} is a folder but reference {reference!r} is a file")
    missing = [n for n in names if not os.path.isfile(os.path.join(reference, n))]
    if missing:
        raise SystemExit(f"error: no reference video of the same name in {reference!r} for: {', '.join(missing)}")
    return [(os.path.join(candidate, n), os.path.join(reference, n)) for n in names], names


def run(args: argparse.Namespace) -> int:
    from .metrics import evaluate, format_table

    pairs, names = pair_paths(args.candidate, args.reference)
    try:
        result = evaluate(pairs, fps=args.fps, weights_dir=args.weights_dir, names=names,
                          run={"candidate": args.candidate, "reference": args.reference})
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # unreadable video, bad shapes, foreign checkpoint
        raise SystemExit(f"error: {e}")
    print(format_table(result))
    out = args.json or "eval.json"
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out} ({len(pairs)} video(s))")
    return 0


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="score videos offline (VBench-style, fidelity vs a reference)")
    e.add_argument("candidate", help="video file or folder")
    e.add_argument("--reference", default=None, help="video file or folder (matched by name), e.g. the dense render")
    e.add_argument("--json", default=None, help="where to write the JSON result (default eval.json)")
    e.add_argument("--weights-dir", default=None,
                   help="VBench weight cache (default $VBENCH_CACHE_DIR or ~/.cache/vbench)")
    e.add_argument("--fps", type=float, default=None, help="frame rate for dynamic degree (default: the file's)")
    e.set_defaults(func=run)
