"""`diffsparse eval CANDIDATE [--reference REF] [--json OUT] [--weights-dir DIR]`: score videos offline.

CANDIDATE and REF are video files or folders; folders are matched by file name (every candidate
needs a reference of the same name). Prints the metric table and writes the JSON result.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import List, Optional, Tuple

from .cli_args import HelpFormatter, UsageError, check_out_file, first_line, number_at_least
from .metrics.video import VIDEO_EXTENSIONS


def _videos(folder: str) -> List[str]:
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(VIDEO_EXTENSIONS))


def pair_paths(candidate: str, reference: Optional[str]) -> Tuple[List[Tuple[str, Optional[str]]], List[str]]:
    """(candidate, reference) path pairs and their names; a UsageError naming anything missing or unmatched."""
    if not os.path.exists(candidate):
        raise UsageError(f"candidate {candidate!r} does not exist")
    if reference is not None and not os.path.exists(reference):
        raise UsageError(f"reference {reference!r} does not exist")
    if os.path.isfile(candidate):
        if reference is not None and os.path.isdir(reference):
            raise UsageError(f"candidate {candidate!r} is a file but reference {reference!r} is a folder")
        for role, path in (("candidate", candidate), ("reference", reference)):
            if path is not None and not path.lower().endswith(VIDEO_EXTENSIONS):
                raise UsageError(f"{role} {path!r} is not a video file: eval reads {', '.join(VIDEO_EXTENSIONS)}")
        return [(candidate, reference)], [os.path.basename(candidate)]
    names = _videos(candidate)
    if not names:
        raise UsageError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in {candidate!r}")
    if reference is None:
        return [(os.path.join(candidate, n), None) for n in names], names
    if not os.path.isdir(reference):
        raise UsageError(f"candidate {candidate!r} is a folder but reference {reference!r} is a file")
    missing = [n for n in names if not os.path.isfile(os.path.join(reference, n))]
    if missing:
        raise UsageError(f"no reference video of the same name in {reference!r} for: {', '.join(missing)}")
    return [(os.path.join(candidate, n), os.path.join(reference, n)) for n in names], names


def run(args: argparse.Namespace) -> int:
    from .metrics import evaluate, format_table

    pairs, names = pair_paths(args.candidate, args.reference)
    out = args.json
    check_out_file(out, "--json", (".json",))
    try:
        result = evaluate(pairs, fps=args.fps, weights_dir=args.weights_dir, names=names,
                          run={"candidate": args.candidate, "reference": args.reference})
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # unreadable video, bad shapes, foreign checkpoint
        raise UsageError(first_line(e)) from None
    print(format_table(result))
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out} ({len(pairs)} video(s))")
    return 0


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="score videos offline (VBench-style, fidelity vs a reference)",
                       formatter_class=HelpFormatter,
                       description="Score videos offline: VBench-style metrics, and fidelity (PSNR, SSIM, ...) "
                                   "against a reference.")
    e.add_argument("candidate", help=f"video file ({', '.join(VIDEO_EXTENSIONS)}) or folder of them")
    e.add_argument("--reference", default=None,
                   help="video file or folder (matched by name), e.g. the dense render (default: none, "
                        "no-reference metrics only)")
    e.add_argument("--json", default="eval.json", help="where to write the JSON result, in an existing folder")
    e.add_argument("--weights-dir", default=None,
                   help="VBench weight cache (default: $VBENCH_CACHE_DIR or ~/.cache/vbench)")
    e.add_argument("--fps", type=number_at_least(1), default=None,
                   help="frame rate for dynamic degree, >= 1 (default: the file's)")
    e.set_defaults(func=run)
