"""The bench report: a plain-text table of one run's dict (what ``bench.json`` holds)."""

from __future__ import annotations

from typing import Any


def _fmt_flops(x: float) -> str:
    for unit, scale in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP/s"


def format_table(res: dict[str, Any]) -> str:
    lines = [f"genhancer bench — {res['device']} | torch {res['torch']} | {res['threads']} threads | "
             f"load average {res['load_average_start']:.1f} -> {res['load_average_end']:.1f}"
             + (" | quick" if res["quick"] else "")]

    def section(title):
        lines.append("")
        lines.append(title)
        lines.append("-" * len(title))

    section("matmul ceiling")
    for k, v in res["matmul"].items():
        sizes = ", ".join(f"{n}: {_fmt_flops(f)}" for n, f in v["by_size"].items())
        lines.append(f"  {k:<6} best {_fmt_flops(v['flops']):>16}   ({sizes})")
    if {"fp32", "bf16"} <= set(res["matmul"]):
        ratio = res["matmul"]["bf16"]["flops"] / res["matmul"]["fp32"]["flops"]
        lines.append(f"  bf16 / fp32: {ratio:.2f}x (same run)")

    section("denoiser train step (fwd + bwd, analytic FLOPs = 3 x forward)")
    lines.append(f"  {'preset':<10}{'params':>10}{'tokens':>8}{'batch':>7}{'dtype':>10}{'GFLOP/step':>12}"
                 f"{'ms/step':>10}{'achieved':>18}{'% ceiling':>11}")
    for r in res["denoiser"]:
        lines.append(f"  {r['preset']:<10}{r['params'] / 1e6:>9.2f}M{r['tokens']:>8}{r['batch']:>7}"
                     f"{r['dtype']:>10}{r['flops_per_step'] / 1e9:>12.2f}{r['step_s'] * 1e3:>10.1f}"
                     f"{_fmt_flops(r['flops_per_s']):>18}{r['pct_of_ceiling']:>10.1f}%")
    if "optimizer" in res:
        o = res["optimizer"]
        lines.append(f"  AdamW update of {o['preset']} ({o['params'] / 1e6:.2f} M): foreach {o['foreach_s'] * 1e3:.1f} ms, "
                     f"fused {o['fused_s'] * 1e3:.1f} ms ({o['speedup']:.2f}x; the training loop uses fused)")

    if "reference" in res:
        ref = res["reference"]
        section(f"reference MM-DiT: ours vs diffusers FluxTransformer2DModel, same dimensions ({ref['preset']}; "
                f"fwd + bwd + fused AdamW, alternating rounds)")
        lines.append(f"  parameters: ours {ref['params_ours'] / 1e6:.2f} M, diffusers {ref['params_diffusers'] / 1e6:.2f} M")
        lines.append(f"  {'batch x tokens':<16}{'ours ms':>10}{'diffusers ms':>14}{'ours / diffusers':>18}")
        for r in ref["shapes"]:
            lines.append(f"  {r['batch']:>5} x {r['tokens']:<8}{r['ours_step_s'] * 1e3:>10.1f}"
                         f"{r['diffusers_step_s'] * 1e3:>14.1f}{r['speedup']:>16.2f}x faster")

    if "pretrain" in res:
        pr = res["pretrain"]
        section(f"genhancer pretrain-clip (tiny CLIP {pr['vision']}, {pr['image_size']} px, batch {pr['batch']}, "
                f"captions {pr['text_tokens']} tokens; {pr['steps']} real steps)")
        lines.append(f"  {pr['step_s'] * 1e3:.1f} ms / step, {_fmt_flops(pr['flops_per_s'])} "
                     f"(analytic matmul FLOPs), {pr['pct_of_ceiling']:.1f}% of the fp32 matmul ceiling")
        if "bf16_step_s" in pr:
            lines.append(f"  bf16 autocast (--mixed-precision bf16): {pr['bf16_step_s'] * 1e3:.1f} ms / step, "
                         f"{pr['bf16_speedup']:.2f}x the fp32 step (same run)")

    e = res["enhancer"]
    section(f"enhancer optimizer step (tiny CLIP @ {e['encoder_image_size']} px, batch {e['batch']})")
    lines.append(f"  {'':<44}{'from tensors':>14}{'from files':>12}")

    def row(label, a, b):
        lines.append(f"  {label:<44}{a:>14.1f}{(f'{b:.1f}' if b else '-'):>12}")
    for k in ("enhancer", "enhancer_tiny"):
        if k not in res:
            continue
        r = res[k]
        files = r.get("stage1_files_samples_per_s")
        cache_files = r.get("stage1_cache_files_samples_per_s")

        den = r["denoiser"]
        row(f"{den} stage 1 from images (samples/s)", r["stage1_uncached_samples_per_s"], files)
        row(f"{den} stage 1 from cache (samples/s)", r["stage1_cached_samples_per_s"], cache_files)
        lines.append(f"  {den} cache speed-up {r['cache_speedup']:.2f}x of a {r['cache_bound']:.2f}x bound"
                     + (f"; from files {r['cache_speedup_files']:.2f}x" if "cache_speedup_files" in r else ""))
    den = e["denoiser"]
    row(f"{den} stage 2 (LoRA) from images (samples/s)", e["stage2_samples_per_s"], e.get("stage2_files_samples_per_s"))
    row(f"{den} stage 2 from a --with-pixels cache", e["stage2_cached_samples_per_s"],
        e.get("stage2_cache_files_samples_per_s"))
    lines.append(f"  {den} stage-2 cache speed-up {e['stage2_cache_speedup']:.2f}x of a {e['stage2_cache_bound']:.2f}x "
                 "bound (the autoencoder forward it skips)"
                 + (f"; from files {e['stage2_cache_speedup_files']:.2f}x" if "stage2_cache_speedup_files" in e else ""))

    if "objectives" in res:
        from genhancer.bench.objectives import format_objectives

        o = res["objectives"]
        section(f"stage-2 step per objective ({o['denoiser']} denoiser, batch {o['batch']}, tiny CLIP; same run)")
        lines.extend(format_objectives(o))

    for key in ("eval", "eval_reference"):
        if key not in res:
            continue
        v = res[key]
        sh = v["encoder_shape"]
        section(f"evaluation encoding, {v.get('encoder', 'tiny CLIP')} (width {sh['width']} x {sh['layers']} layers, "
                f"{sh['params'] / 1e6:.1f} M; {v['images']} JPEGs {v['image_size_on_disk']} px -> "
                f"{v['encoder_image_size']} px, batch {v['batch_size']})")
        lines.append(f"  encode_images (files)    {v['eval_images_per_s']:>10.1f} images/s")
        if "inline_decode_images_per_s" in v:
            lines.append(f"  ... without reader threads {v['inline_decode_images_per_s']:>8.1f} images/s"
                         f"   (ratio {v['ratio_inline']:.2f})")
        lines.append(f"  bare encoder forward     {v['bare_forward_images_per_s']:>10.1f} images/s")
        lines.append(f"  ratio eval / bare        {v['ratio']:>10.2f}   (overhead "
                     f"{v['overhead_ms_per_image']:.2f} ms/image)")
        if "projected_ratio_vit_l14_224" in v:
            lines.append(f"  same overhead on ViT-L/14 @ 224: ratio {v['projected_ratio_vit_l14_224']:.3f}")

    c = res["compile"]
    if c.get("enabled"):
        section("torch.compile (denoiser step)")
        if "error" in c:
            lines.append(f"  failed: {c['error']}")
        else:
            lines.append(f"  {c['preset']} @ {c['tokens']} tokens: eager {c['eager_step_s'] * 1e3:.1f} ms, "
                         f"compiled {c['compiled_step_s'] * 1e3:.1f} ms -> {c['speedup']:.2f}x "
                         f"(compile {c['compile_s']:.1f} s)")

    m = res["memory"]
    section("peak memory")
    kind = "CUDA allocated" if m["kind"] == "cuda_allocated" else "process max RSS (high-water mark)"
    lines.append(f"  {kind}: " + ", ".join(f"{k} {v:.0f} MB" for k, v in m["sections_mb"].items()))
    lines.append(f"  peak RSS {m['peak_rss_mb']:.0f} MB")

    est = res["memory_estimate"]
    i = est["inputs"]
    section(f"memory estimate: {i['vision']} @ {i['image_size']}, {i['denoiser']}, stage {i['stage']}, "
            f"batch {i['batch']}, {i['dtype']} activations, {i['weights']} weights, "
            f"grad ckpt {'on' if i['grad_ckpt'] else 'off'}")
    pc = est["param_counts"]
    for k, gbv in est["params_gb"].items():
        lines.append(f"  weights  {k:<22}{pc[k] / 1e6:>10.1f} M {gbv:>9.2f} GB")
    lines.append(f"  trainable {pc['trainable'] / 1e6:.1f} M: master copies {est['master_weights_gb']:.2f} GB, "
                 f"gradients {est['gradients_gb']:.2f} GB, AdamW {est['optimizer_gb']:.2f} GB")
    lines.append("  activations " + ", ".join(f"{k} {gbv:.2f} GB" for k, gbv in est["activations_gb"].items()))
    lines.append(f"  total {est['total_gb']:.2f} GB")
    if res.get("wall_s"):
        lines.append("")
        lines.append("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in res["wall_s"].items()))
    return "\n".join(lines)


def format_memory_run(res: dict[str, Any]) -> str:
    est = res["estimate"]
    lines = [f"memory of one optimizer step — {res['device']} | stage {res['stage']}, batch {res['batch']}, "
             f"{res['mixed_precision']} | {res['step_s']:.2f} s/step",
             "  measured peak (torch.cuda.max_memory_allocated): "
             + (f"{res['measured_peak_gb']:.2f} GB" if res["measured_peak_gb"] is not None else "n/a on CPU"),
             f"  analytic estimate: {res['estimate_gb']:.2f} GB (weights {est['params_total_gb']:.2f}, master "
             f"{est['master_weights_gb']:.2f}, gradients {est['gradients_gb']:.2f}, AdamW {est['optimizer_gb']:.2f}, "
             f"activations {est['activations_total_gb']:.2f})",
             "  parameters (real / estimate):"]
    for k, v in res["param_counts"].items():
        lines.append(f"    {k:<14}{v / 1e6:>10.2f} M / {est['param_counts'][k] / 1e6:.2f} M")
    return "\n".join(lines)

