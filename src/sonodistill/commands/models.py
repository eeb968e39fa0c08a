"""`sonodistill models`: list the registered backbones with parameter counts, FLOPs and stage shapes."""

from __future__ import annotations

import argparse

from sonodistill.errors import ConfigError


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x16x112x112' -> (1, 16, 112, 112); raises ConfigError on anything else."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input '{text}': expected C x T x H x W like 1x16x112x112") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ConfigError(f"--input '{text}': expected 4 positive sizes C x T x H x W like 1x16x112x112")
    return shape


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(v) for v in shape)


def summary_rows(names: list[str], input_shape: tuple[int, ...] | None, width: float) -> list[dict]:
    """One `backbone_summary` per name; frame backbones get `C x H x W` of a `C x T x H x W` input."""
    from sonodistill.models.backbones import BACKBONES, backbone_summary

    rows = []
    for name in names:
        if name not in BACKBONES:
            raise ConfigError(f"unknown backbone '{name}'; choose from {', '.join(BACKBONES)}")
        spec = BACKBONES[name]
        shape = spec.input_shape if input_shape is None else input_shape
        if spec.kind == "frame" and len(shape) == 4:
            shape = (shape[0], shape[2], shape[3])
        row = backbone_summary(name, shape, width=width)
        row["input"] = shape
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Aligned text table: name, kind, input, params (M), GFLOPs, embed dim, stage shapes (C x [T x] H x W)."""
    header = ["name", "kind", "input", "params(M)", "GFLOPs", "embed", "stages"]
    body = [
        [
            r["name"],
            r["kind"],
            _fmt_shape(r["input"]),
            f"{r['params'] / 1e6:.2f}",
            f"{r['flops'] / 1e9:.2f}",
            str(r["embed_dim"]),
            " ".join(_fmt_shape(s) for s in r["stage_shapes"]),
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body])


def run(args: argparse.Namespace) -> int:
    from sonodistill.models.backbones import list_backbones

    shape = parse_shape(args.input) if args.input else None
    rows = summary_rows(args.names or list_backbones(), shape, args.width)
    print(format_table(rows))
    print("GFLOPs: forward pass, batch 1, 2 FLOPs per multiply-add (torch.utils.flop_counter).")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list backbones with parameter counts, FLOPs and stage shapes")
    p.add_argument("--input", default=None, metavar="CxTxHxW",
                   help="input size, e.g. 1x16x112x112 (frame backbones get CxHxW); default: each backbone's own")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (channels / embedding dim)")
    p.add_argument("--names", nargs="+", default=None, metavar="NAME", help="backbones to list (default: all)")
    p.set_defaults(func=run)
