"""``genhancer eval``: mmvp, zeroshot, retrieval, probe, compare (the encoder alone)."""

from __future__ import annotations

from genhancer.cli.common import at_least, check_out_dir, command, dump


def _add_eval(p):
    sub = p.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    m = sub.add_parser("mmvp", help="MMVP-VLM pair accuracy (upstream protocol)")
    m.add_argument("--model", required=True, help="model directory or hub id (original or exported)")
    m.add_argument("--data", required=True, help="MMVP-VLM directory with Questions.csv and 'MLLM_VLM Images/'")
    m.add_argument("--allow-partial", action="store_true", help="score what exists and list what was skipped")
    z = sub.add_parser("zeroshot", help="zero-shot classification over an image folder (class = subfolder)")
    z.add_argument("--model", required=True)
    z.add_argument("--data", required=True)
    r = sub.add_parser("retrieval", help="image<->text recall@1/5/10 from a captions CSV / JSONL")
    r.add_argument("--model", required=True)
    r.add_argument("--data", required=True, help="CSV or JSONL with image paths (relative to it) and captions")
    r.add_argument("--image-column", default="image")
    r.add_argument("--caption-column", default="caption")
    r.add_argument("--allow-partial", action="store_true")
    pr = sub.add_parser("probe", help="linear probes of labelled attributes on the frozen global token")
    pr.add_argument("--model", required=True)
    pr.add_argument("--data", required=True, help="labels.jsonl with 'image' and 'label_ids' per row")
    pr.add_argument("--features", choices=("global", "patches"), default="global",
                    help="probe the global token (default) or the flattened patch tokens")
    c = sub.add_parser("compare", help="before / after table with paired uncertainty and a report")
    c.add_argument("--before", required=True)
    c.add_argument("--after", required=True)
    c.add_argument("--mmvp", help="MMVP-VLM directory")
    c.add_argument("--zeroshot", help="image folder for zero-shot classification")
    c.add_argument("--retrieval", help="captions CSV / JSONL")
    c.add_argument("--allow-partial", action="store_true")
    for sp in (m, z, r, pr, c):
        sp.add_argument("--out", default="runs/eval", help="output directory (default runs/eval)")
        sp.add_argument("--batch-size", type=int, default=32)
        sp.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")


@command("eval", "evaluate encoders: mmvp, zeroshot, retrieval, probe, compare")
def cmd_eval(args) -> int:
    from genhancer import eval as ev
    from genhancer.errors import DataError

    k, out = args.eval_kind, args.out
    at_least("--batch-size", args.batch_size)
    check_out_dir(out)
    if k == "compare":
        if not (args.mmvp or args.zeroshot or args.retrieval):
            raise DataError("eval compare: give at least one of --mmvp, --zeroshot, --retrieval")
        ev.run_compare(args.before, args.after, out, mmvp_data=args.mmvp, zeroshot_data=args.zeroshot,
                       retrieval_file=args.retrieval, batch_size=args.batch_size, device=args.device,
                       allow_partial=args.allow_partial, print_table=True)
        print(f"report: {out}/report.html")
        return 0
    if k == "mmvp":
        res = ev.run_mmvp(args.model, args.data, out, args.batch_size, args.allow_partial, args.device)
        for cat, score in res["categories"].items():
            print(f"  {cat:<36} {score if score is None else f'{score:5.1f}'}")
        print(f"MMVP-VLM average_score: {res['average_score']:.1f}  -> {out}")
    elif k == "zeroshot":
        res = ev.run_zeroshot(args.model, args.data, out, batch_size=args.batch_size, device=args.device)
        print(f"zero-shot top-1 {res['top1']:.1f}  top-5 {res['top5']:.1f}  -> {out}")
    elif k == "retrieval":
        res = ev.run_retrieval(args.model, args.data, out, args.image_column, args.caption_column,
                               args.batch_size, args.device, args.allow_partial)
        print(dump({k2: v for k2, v in res.items() if k2 != "items"}))
    else:
        from genhancer.eval.probe import run_probe

        res = run_probe(args.model, args.data, out, batch_size=args.batch_size, device=args.device,
                        features=args.features)
        for a, acc in res["per_attribute"].items():
            print(f"  {a:<16} {acc:5.1f}")
        print(f"mean probe accuracy {res['mean']:.1f}  -> {out}")
    return 0


cmd_eval.configure = _add_eval


COMMANDS = (cmd_eval,)
