"""``genhancer eval``: mmvp, zeroshot, retrieval, probe, compare (the encoder alone)."""

from __future__ import annotations

from genhancer.cli.common import at_least, check_out_dir, command, dump

MODEL_HELP = "model directory or hub id (original or exported); REPO:SUBFOLDER for one in a subfolder"
TEXT_FROM_HELP = ("for a vision-only checkpoint (CLIPVisionModel / SiglipVisionModel): the full CLIP / SigLIP "
                  "model whose text tower, tokenizer and logit scale score it; refused when its vision config "
                  "differs")


def _model_args(p) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--subfolder", default="", help="subfolder of --model holding the checkpoint (or REPO:SUBFOLDER)")
    p.add_argument("--text-from", metavar="BASE", help=TEXT_FROM_HELP)


def _add_eval(p):
    sub = p.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    m = sub.add_parser("mmvp", help="MMVP-VLM pair accuracy (upstream protocol)")
    _model_args(m)
    m.add_argument("--data", required=True, help="MMVP-VLM directory with Questions.csv and 'MLLM_VLM Images/'")
    m.add_argument("--allow-partial", action="store_true", help="score what exists and list what was skipped")
    z = sub.add_parser("zeroshot", help="zero-shot classification over an image folder (class = subfolder)")
    _model_args(z)
    z.add_argument("--data", required=True)
    r = sub.add_parser("retrieval", help="image<->text recall@1/5/10 from a captions CSV / JSONL")
    _model_args(r)
    r.add_argument("--data", required=True, help="CSV or JSONL with image paths (relative to it) and captions")
    r.add_argument("--image-column", default="image")
    r.add_argument("--caption-column", default="caption")
    r.add_argument("--allow-partial", action="store_true")
    pr = sub.add_parser("probe", help="linear probes of labelled attributes on the frozen global token")
    _model_args(pr)
    pr.add_argument("--data", required=True, help="labels.jsonl with 'image' and 'label_ids' per row")
    pr.add_argument("--features", choices=("global", "patches"), default="global",
                    help="probe the global token (default) or the flattened patch tokens")
    c = sub.add_parser("compare", help="before / after table with paired uncertainty and a report")
    c.add_argument("--before", required=True, help=MODEL_HELP)
    c.add_argument("--after", required=True, help=MODEL_HELP)
    c.add_argument("--before-subfolder", default="", help="subfolder of --before (or REPO:SUBFOLDER)")
    c.add_argument("--after-subfolder", default="", help="subfolder of --after (or REPO:SUBFOLDER)")
    c.add_argument("--text-from", metavar="BASE",
                   help="text tower for whichever of --before / --after is a vision-only checkpoint")
    c.add_argument("--before-text-from", metavar="BASE", help="text tower for --before only")
    c.add_argument("--after-text-from", metavar="BASE", help="text tower for --after only")
    c.add_argument("--mmvp", help="MMVP-VLM directory (also gives the blind-pair rows: image-only)")
    c.add_argument("--zeroshot", help="image folder for zero-shot classification")
    c.add_argument("--retrieval", help="captions CSV / JSONL")
    c.add_argument("--knn", metavar="LABELS", help="probe labels.jsonl: k-NN accuracy of each labelled attribute "
                   "on the global token (image-only)")
    c.add_argument("--knn-k", type=int, default=10, help="neighbours for --knn (default 10)")
    c.add_argument("--allow-partial", action="store_true")
    for sp in (m, z, r, pr, c):
        sp.add_argument("--out", default="runs/eval", help="output directory (default runs/eval)")
        sp.add_argument("--batch-size", type=int, default=32)
        sp.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")


def _compare_side(args, side: str):
    """``--before`` / ``--after`` with their subfolder and text tower: the shared ``--text-from``
    goes only to a side that is vision-only (the other has its own text tower)."""
    from genhancer.encoders.sources import is_vision_only, parse_model_ref

    ref = parse_model_ref(getattr(args, side), getattr(args, f"{side}_subfolder"), what=f"--{side}")
    own = getattr(args, f"{side}_text_from")
    if own is None and args.text_from and is_vision_only(ref):
        own = args.text_from
    return parse_model_ref(ref, text_from=own, what=f"--{side}") if own else ref


@command("eval", "evaluate encoders: mmvp, zeroshot, retrieval, probe, compare")
def cmd_eval(args) -> int:
    from genhancer import eval as ev
    from genhancer.encoders.vision_only import refuse_image_only
    from genhancer.errors import DataError
    from genhancer.validation import refuse_selected_on

    k, out = args.eval_kind, args.out
    at_least("--batch-size", args.batch_size)
    check_out_dir(out)
    if k == "compare":
        if not (args.mmvp or args.zeroshot or args.retrieval or args.knn):
            raise DataError("eval compare: give at least one of --mmvp, --zeroshot, --retrieval, --knn")
        at_least("--knn-k", args.knn_k)
        sets = {"--mmvp": args.mmvp, "--zeroshot": args.zeroshot, "--retrieval": args.retrieval, "--knn": args.knn}
        for side in ("before", "after"):  # an export picked on one of these sets cannot be tested on it
            refuse_selected_on(_compare_side(args, side), sets)
            if args.zeroshot or args.retrieval:   # these need a text tower on both sides
                refuse_image_only(_compare_side(args, side))
        ev.run_compare(_compare_side(args, "before"), _compare_side(args, "after"), out, mmvp_data=args.mmvp,
                       zeroshot_data=args.zeroshot, retrieval_file=args.retrieval, knn_labels=args.knn,
                       knn_k=args.knn_k, batch_size=args.batch_size, device=args.device,
                       allow_partial=args.allow_partial, print_table=True)
        print(f"report: {out}/report.html")
        return 0
    from genhancer.encoders.sources import parse_model_ref

    model = parse_model_ref(args.model, args.subfolder, args.text_from)
    refuse_selected_on(model, {"--data": args.data})
    if k != "probe":   # mmvp, zeroshot, retrieval score with the text tower: refuse DINOv2 / ViT before reading data
        refuse_image_only(model)
    if k == "mmvp":
        res = ev.run_mmvp(model, args.data, out, args.batch_size, args.allow_partial, args.device)
        for cat, score in res["categories"].items():
            print(f"  {cat:<36} {score if score is None else f'{score:5.1f}'}")
        print(f"MMVP-VLM average_score: {res['average_score']:.1f}  -> {out}")
        b = res["blind_pairs"]
        print(f"blind pairs (global-token cosine > {b['threshold']}): {b['share']:.1f} % of {b['n_pairs']}, "
              f"mean pair cosine {b['mean_cosine']:.3f}")
    elif k == "zeroshot":
        res = ev.run_zeroshot(model, args.data, out, batch_size=args.batch_size, device=args.device)
        print(f"zero-shot top-1 {res['top1']:.1f}  top-5 {res['top5']:.1f}  -> {out}")
    elif k == "retrieval":
        res = ev.run_retrieval(model, args.data, out, args.image_column, args.caption_column,
                               args.batch_size, args.device, args.allow_partial)
        print(dump({k2: v for k2, v in res.items() if k2 != "items"}))
    else:
        from genhancer.eval.probe import run_probe

        res = run_probe(model, args.data, out, batch_size=args.batch_size, device=args.device,
                        features=args.features)
        for a, acc in res["per_attribute"].items():
            print(f"  {a:<16} {acc:5.1f}")
        print(f"mean probe accuracy {res['mean']:.1f}  -> {out}")
    return 0


cmd_eval.configure = _add_eval


COMMANDS = (cmd_eval,)
