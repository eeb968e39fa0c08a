"""`sonodistill annotate CKPT INPUT`: findings, a description and the nearest training report, as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _annotate(args: argparse.Namespace) -> int:
    from sonodistill.serve.annotate import annotate_path, load_annotator

    ann = load_annotator(args.checkpoint)
    result = annotate_path(ann, args.input, top_k=args.top_k, threshold=args.threshold, ranking=args.ranking)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("annotate", help="DILBERT: findings with probabilities, a description and the nearest "
                                        "training report for one sequence, as JSON")
    p.add_argument("checkpoint", help="annotator folder (RUN/fold_K/export/student, RUN/final/export/student), "
                                      "a member folder (RUN/fold_K) or a run directory (the annotator predict "
                                      "serves: final/, else the lowest fold's)")
    p.add_argument("input", help="a video or DICOM file, or a folder of frames (one sequence, sorted by name)")
    p.add_argument("--top-k", type=int, default=5, help="training reports listed under retrieved_reports")
    p.add_argument("--threshold", type=float, help="probability threshold of a present finding (default: the "
                                                    "annotator's, 0.5)")
    p.add_argument("--ranking", choices=("raw", "bank"), help="rank the training reports by the raw CMM "
                   "probability or by the bank-normalised score (default: the annotator's report_ranking)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=_annotate)
