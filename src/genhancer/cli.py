"""``genhancer`` command line.

Every subcommand is a small function over the library; user mistakes raise a
``GenHancerError`` which ``main`` prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from genhancer.errors import GenHancerError

_COMMANDS: dict[str, callable] = {}


def command(name: str, help: str):
    """Register ``fn(args)`` as subcommand ``name``; ``fn.configure(parser)`` adds its options."""

    def deco(fn):
        fn.cli_name, fn.cli_help = name, help
        _COMMANDS[name] = fn
        return fn

    return deco


def _quiet_libraries() -> None:
    # Library chatter (hub warnings, "Loading weights" bars) would bury our own output.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers always present
        pass
    logging.getLogger("accelerate").setLevel(logging.WARNING)


# ----------------------------------------------------------------------------- info

def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--denoiser", help="print the parameter count of this flow_dit / perceiver preset")
    p.add_argument("--model", help="an encoder directory or hub id: print its family and parameter counts")
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("info", "versions, device, presets and parameter counts")
def cmd_info(args) -> int:
    import platform

    import torch

    from genhancer import __version__
    from genhancer.config import list_presets

    info: dict = {"genhancer": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for mod in ("transformers", "peft", "diffusers", "accelerate", "webdataset", "datasets"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = "not installed"
    info["device"] = (f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available()
                      else f"cpu ({torch.get_num_threads()} threads)")
    info["presets"] = list_presets()
    from genhancer.denoisers import count_denoiser_params, list_denoiser_presets

    if args.denoiser:
        info["denoiser"] = {args.denoiser: count_denoiser_params(args.denoiser)}
    else:
        info["denoiser_params"] = {n: count_denoiser_params(n) for n in list_denoiser_presets()}
    if args.model:
        from genhancer.encoders import load_encoder

        enc = load_encoder(args.model)
        info["model"] = {"family": enc.family, "image_size": enc.spec.size,
                         "vision_params": sum(p.numel() for p in enc.vision_tower.parameters()),
                         "text_params": sum(p.numel() for p in enc.text_tower.parameters()),
                         "global_dim": enc.global_dim, "patch_tokens": enc.num_patches}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info.items():
        if isinstance(v, dict):
            print(f"{k}:")
            for kk, vv in v.items():
                print(f"  {kk:<22} {vv:,}" if isinstance(vv, int) else f"  {kk:<22} {vv}")
        elif isinstance(v, list):
            print(f"{k}: {', '.join(v)}")
        else:
            print(f"{k}: {v}")
    return 0


cmd_info.configure = _add_info


# ----------------------------------------------------------------------------- export

def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a stage-2 / e2e checkpoint directory or its run directory")
    p.add_argument("out_dir", help="where to write the merged transformers checkpoint")
    p.add_argument("--vision-only", action="store_true", help="write only the vision model (CLIPVisionModel / "
                   "SiglipVisionModel) and its image processor")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")


@command("export", "merge LoRA into the vision tower and write a transformers checkpoint")
def cmd_export(args) -> int:
    from genhancer.export import export

    out = export(args.checkpoint, args.out_dir, vision_only=args.vision_only, overwrite=args.overwrite)
    print(f"wrote {'vision model' if args.vision_only else 'merged model'} to {out}")
    return 0


cmd_export.configure = _add_export


# ----------------------------------------------------------------------------- entry point

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (which command, what is wrong) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import genhancer.commands  # noqa: F401  (registers the remaining subcommands)

    parser = _Parser(
        prog="genhancer",
        description="Make CLIP-family vision encoders see fine detail with a light generative enhancer "
                    "(GenHancer, ICCV 2025).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, fn in _COMMANDS.items():
        sp = sub.add_parser(name, help=fn.cli_help, description=fn.__doc__ or fn.cli_help)
        getattr(fn, "configure", lambda p: None)(sp)
        sp.set_defaults(_fn=fn)
    return parser


def _version() -> str:
    from genhancer import __version__

    return f"genhancer {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (`train -c x a.b=1 --resume c.d=2`).
    try:  # argparse exits on --help and on usage errors; in-process callers get the code back
        args, extra = parser.parse_known_args(argv)
        if extra and (not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        return int(e.code or 0)
    if extra:
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 2
    _quiet_libraries()
    try:
        return int(args._fn(args) or 0)
    except GenHancerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except FileNotFoundError as e:
        print(f"error: {e.strerror}: '{e.filename}'", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    # Run the imported module's main: subcommands register into `genhancer.cli`, not `__main__`.
    from genhancer.cli import main as _main

    sys.exit(_main())

