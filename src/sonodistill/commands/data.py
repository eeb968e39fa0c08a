"""`sonodistill data probe | inspect | preview | crop-check | synth`: look at data before training on it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sonodistill.errors import DataError

log = logging.getLogger(__name__)

_PROGRESS_MIN_FILES = 10  # show a progress bar (stderr) from this many files on


def _fmt_fps(fps: float | None) -> str:
    return "none" if fps is None else f"{fps:.3f}".rstrip("0").rstrip(".")


def _probe_items(names: list[str], recursive: bool) -> list[tuple[str, DataError | None]]:
    """What `data probe` reports on, in order: each file as given, each folder's supported files
    (`readers.files_in_folder`), or a folder's error (no supported files) in its place."""
    from sonodistill.data.readers import files_in_folder

    items: list[tuple[str, DataError | None]] = []
    for name in names:
        if not Path(name).is_dir():
            items.append((name, None))
            continue
        try:
            items.extend((str(f), None) for f in files_in_folder(name, recursive))
        except DataError as exc:
            items.append((name, exc))
    return items


def _probe(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sonodistill.data.readers import probe_file

    failed = 0
    items = _probe_items(args.files, args.recursive)
    bar = tqdm(items, desc="probe", unit="file", file=sys.stderr,
               disable=len(items) < _PROGRESS_MIN_FILES or args.no_progress or not sys.stderr.isatty())
    for path, error in bar:
        try:
            if error is not None:
                raise error
            r = probe_file(path)
        except DataError as exc:
            failed += 1
            line = f"{path}\terror: {exc.cause}"
        except Exception as exc:  # noqa: BLE001 - one file's failure, whatever it is, must not end the probe
            failed += 1
            log.error("%s: unexpected error", path, exc_info=exc)
            line = f"{path}\terror: {type(exc).__name__}: {exc}"
        else:
            line = (f"{path}\tframes={r.frames}\theight={r.height}\twidth={r.width}\t"
                    f"channels={r.channels}\tfps={_fmt_fps(r.fps)}")
        tqdm.write(line, file=sys.stdout)
    if failed:
        print(f"{failed} of {len(items)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _adapter_options(args: argparse.Namespace) -> dict:
    """`--option KEY=VALUE` (repeatable, values as text; `null` or `~` is None, as in `--set`) and `--target`, as
    the adapter's keyword options."""
    from sonodistill.data.adapters import adapter_options
    from sonodistill.errors import ConfigError

    options: dict[str, str | None] = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE, e.g. --option group_by=file")
        options[key.strip()] = None if value.strip() in ("null", "~") else value
    return adapter_options(options, args.target or None)


def _inspect(args: argparse.Namespace) -> int:
    from sonodistill.data.adapters import load_adapter
    from sonodistill.data.splits import inspect_report

    manifest = load_adapter(args.adapter, args.root, **_adapter_options(args))
    from sonodistill.data.dicom_patients import patients_summary

    lines = inspect_report(manifest, n_splits=args.folds, seed=args.seed).split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("- items:")) + 1
    patients = patients_summary(manifest)  # who the DICOMs belong to, by their headers (IDs never shown)
    if patients:
        lines.insert(at, f"- DICOM patients (headers): {patients}")
    if manifest.modality == "video":  # scanner exports mix cine loops and stills: say how many frames files hold
        from sonodistill.data.frame_counts import frame_counts

        lines.insert(at, f"- frames per file (headers): {frame_counts(manifest.paths).summary()}")
    print("\n".join(lines))
    if args.write_folds:
        from sonodistill.data.folds import fold_table

        table = fold_table(manifest, args.folds, args.seed)
        Path(args.write_folds).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.write_folds, index=False)
        print(f"wrote {args.write_folds} ({len(table)} rows: each item's test fold)", file=sys.stderr)
    return 0


def _cache(args: argparse.Namespace) -> int:
    """`data cache`: a table of the cache's units, or (--clear) delete the rebuildable ones."""
    import time

    from sonodistill.data.cache import default_cache_dir
    from sonodistill.data.cache_usage import cache_items, clear_cache, human_bytes
    from sonodistill.errors import ConfigError

    root = Path(args.dir) if args.dir else default_cache_dir()
    if args.older_than is not None and not args.clear:
        raise ConfigError("data cache: --older-than chooses what --clear deletes; give --clear too")
    if args.older_than is not None and args.older_than < 0:
        raise ConfigError(f"data cache: --older-than must be >= 0 days, got {args.older_than}")
    if args.clear:
        removed = clear_cache(root, args.older_than)
        freed = sum(i.bytes for i in removed)
        for item in removed:
            print(f"deleted {item.path} ({item.files} files, {human_bytes(item.bytes)})")
        print(f"{root}: freed {human_bytes(freed)} ({len(removed)} folder(s) or file(s)); runs rebuild them on demand")
        return 0
    items = cache_items(root)
    if not items:
        print(f"{root}: empty (or not created yet)")
        return 0
    print(f"# {root}\n\n| what | kind | preprocessing | files | size | built (newest file) | rebuilt by runs |\n"
          "|---|---|---|---|---|---|---|")
    for i in items:
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.newest)) if i.files else "-"
        print(f"| {i.path.relative_to(root)} | {i.kind} | {i.settings() or '-'} | {i.files} | "
              f"{human_bytes(i.bytes)} | {built} | {'yes' if i.rebuildable else 'no'} |")
    total = sum(i.bytes for i in items)
    spare = sum(i.bytes for i in items if i.rebuildable)
    print(f"\nTotal {human_bytes(total)}, of which {human_bytes(spare)} rebuildable (`sonodistill data cache --clear"
          " [--older-than DAYS]` deletes it). A clips folder is one preprocessing setting (size, crop, overlay "
          "removal) of every file trained at it.")
    return 0


def _preview(args: argparse.Namespace) -> int:
    from sonodistill.data.adapters import load_adapter
    from sonodistill.data.preprocess import PreprocessConfig
    from sonodistill.data.preview import write_contact_sheet

    manifest = load_adapter(args.adapter, args.root, **_adapter_options(args))
    path = write_contact_sheet(manifest, args.out, PreprocessConfig(size=args.size), n=args.n, seed=args.seed)
    print(path)
    return 0


def _crop_check(args: argparse.Namespace) -> int:
    from sonodistill.data.preprocess import PreprocessConfig
    from sonodistill.data.preview import write_crop_check

    cfg = PreprocessConfig(size=args.size)
    failed = 0
    for path in args.files:
        try:
            print(write_crop_check(path, args.out, cfg))
        except DataError as exc:
            failed += 1
            print(f"{path}\terror: {exc.cause}")
    return 1 if failed else 0


def _synth(args: argparse.Namespace) -> int:
    from sonodistill.data.synthetic import write_dataset

    print(write_dataset(args.preset, args.out, args.n, seed=args.seed, frames=args.frames, size=args.size))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="probe files, inspect data sets, preview preprocessing, write synthetic data")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])

    pr = dsub.add_parser("probe", help="decode files completely; print frames, size, channels, fps or the error")
    pr.add_argument("files", nargs="+", metavar="FILE", help="files, or folders (their supported files)")
    pr.add_argument("-r", "--recursive", action="store_true", help="folders: their sub-folders' files too")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.set_defaults(func=_probe)

    ins = dsub.add_parser("inspect", help="class counts, groups and a grouped k-fold split report of a data set")
    ins.add_argument("adapter", help="lus-blues | pocus-frames | hc18 | busi | folder | image-masks | unlabelled | csv")
    ins.add_argument("root", help="the data set folder (or CSV for 'csv')")
    ins.add_argument("--target", help="adapter target, e.g. severity | severity3 | b_lines for lus-blues")
    ins.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="an adapter option (repeatable), e.g. group_by=file, group_regex=..., mask_suffix=_gt, "
                          "group_col=null (null: none); "
                          "train takes them as --set data.adapter_options=\"{KEY: VALUE}\"")
    ins.add_argument("--folds", type=int, default=5)
    ins.add_argument("--seed", type=int, default=0, help="the fold split's seed (train.fold_seed, else train.seed)")
    ins.add_argument("--write-folds", metavar="CSV",
                     help="also write each item's test fold (path, group, label, fold), the split `train` makes "
                          "with these folds and seed, for use in other tools")
    ins.set_defaults(func=_inspect)

    pv = dsub.add_parser("preview", help="PNG contact sheet of preprocessed clips with their labels")
    pv.add_argument("adapter")
    pv.add_argument("root")
    pv.add_argument("--out", required=True, help="output folder")
    pv.add_argument("--n", type=int, default=16, help="number of clips (drawn at random)")
    pv.add_argument("--size", type=int, default=112, help="preprocessed side in pixels")
    pv.add_argument("--target")
    pv.add_argument("--option", action="append", metavar="KEY=VALUE", help="an adapter option (repeatable)")
    pv.add_argument("--seed", type=int, default=0)
    pv.set_defaults(func=_preview)

    cc = dsub.add_parser("crop-check", help="PNG per file: region outline on the first frame | preprocessed frame")
    cc.add_argument("files", nargs="+", metavar="FILE")
    cc.add_argument("--out", required=True, help="output folder (writes OUT/<stem>_crop.png)")
    cc.add_argument("--size", type=int, default=112)
    cc.set_defaults(func=_crop_check)

    ca = dsub.add_parser("cache", help="what the cache holds (size, files, when built a settings folder), and "
                                       "clearing what runs rebuild")
    ca.add_argument("--dir", help="the cache folder (default: SONODISTILL_CACHE, else ~/.cache/sonodistill)")
    ca.add_argument("--clear", action="store_true",
                    help="delete the preprocessed clips and masks, feature extractions and synthetic sets (runs "
                         "rebuild them; the ImageNet weights in weights/ are kept)")
    ca.add_argument("--older-than", type=float, metavar="DAYS",
                    help="with --clear: only what was built more than DAYS days ago")
    ca.set_defaults(func=_cache)

    sy = dsub.add_parser("synth", help="write a synthetic data set (videos/images, masks, manifest.csv)")
    sy.add_argument("preset")
    sy.add_argument("--out", required=True)
    sy.add_argument("-n", type=int, required=True, help="number of items")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--frames", type=int, default=32)
    sy.add_argument("--size", type=int, default=128)
    sy.set_defaults(func=_synth)
