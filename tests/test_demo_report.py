"""The demo report is real HTML: tables, pictures that exist, the answer first."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from genhancer.demo.report import write_report
from genhancer.demo.world import FINE_ATTRIBUTES, MMVP_CATEGORIES


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _encoder_result(probe: float, mmvp: float, zs: float, patches: bool = False) -> dict:
    r = {"probe": probe, "mmvp": mmvp, "zeroshot": zs,
         "probe_per_attribute": dict.fromkeys(FINE_ATTRIBUTES, probe),
         "mmvp_categories": {c: mmvp for c, _ in MMVP_CATEGORIES}}
    if patches:
        r |= {"probe_patches": 90.0, "probe_patches_per_attribute": dict.fromkeys(FINE_ATTRIBUTES, 90.0)}
    return r


def _fake_run(out: Path, usage: float) -> None:
    (out / "eval").mkdir(parents=True)
    res = {"baseline": _encoder_result(40.0, 10.0, 92.0, patches=True), "enhanced": _encoder_result(48.0, 16.0, 91.5),
           "control": _encoder_result(40.5, 10.5, 92.0),
           "compare_rows": [{"metric": "MMVP-VLM average", "before": 10.0, "after": 16.0, "delta": 6.0,
                             "ci_low": 1.0, "ci_high": 11.0, "p_value": 0.03}]}
    (out / "eval" / "results.json").write_text(json.dumps(res))
    for name in ("stage1", "stage2", "control"):
        d = out / name
        d.mkdir()
        (d / "condition_usage.csv").write_text(f"step,own,shuffled,usage\n0,1.0,1.0,0.0\n10,0.9,{0.9 / (1 - usage)},{usage}\n")
        (d / "condition_usage.json").write_text(json.dumps(
            {"step": 10, "own": 0.9, "shuffled": 0.9 / (1 - usage), "usage": usage,
             "bins": [{"t": "0.0-0.2", "own": 0.5, "shuffled": 0.6, "usage": usage, "n": 4}]}))
        Image.new("RGB", (40, 30)).save(d / "loss_curve.png")
    for name in ("recon_stage1.png", "recon_stage2.png"):
        Image.new("RGB", (40, 30)).save(out / name)
    (out / "timing.json").write_text(json.dumps({"stage 1": {"seconds": 3.0, "reused": False}, "total_seconds": 3.0}))


def _parse(path: Path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text())
    return p


def test_report_is_html_with_tables_and_existing_images(tmp_path):
    _fake_run(tmp_path, usage=0.12)
    report = write_report(tmp_path)
    p = _parse(report)
    assert p.tags.count("table") >= 4 and "pre" not in p.tags
    assert {"recon_stage1.png", "recon_stage2.png", "condition_usage.png", "probes.png"} <= set(p.imgs)
    for src in p.imgs:
        assert (tmp_path / src).is_file(), src
    text = " ".join(p.text)
    # The answer comes first and is against the control.
    assert text.index("Did the enhancement help?") < text.index("Linear probes")
    assert "from 40.0 to 48.0 % (+8.0 points)" in text and "beyond the control is +7.5 probe points" in text
    assert "![" not in text and "| " not in text  # no markdown left in the page
    assert "near zero" not in text


def test_report_says_when_the_denoiser_ignores_the_condition(tmp_path):
    _fake_run(tmp_path, usage=0.001)
    text = " ".join(_parse(write_report(tmp_path)).text)
    assert "near zero: the denoiser hardly uses the global token" in text


def test_report_blind_pair_rows(tmp_path):
    """The image-only rows: blind-pair share per encoder (lower is better, so a drop is green)
    and compare's cosine row with three digits."""
    _fake_run(tmp_path, usage=0.12)
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    for k, v in (("baseline", 60.0), ("control", 58.0), ("enhanced", 40.0)):
        res[k]["mmvp_blind"] = v
    res["compare_rows"].append({"metric": "MMVP pair cosine (mean)", "before": 0.9612, "after": 0.9023,
                                "delta": -0.0589, "ci_low": -0.07, "ci_high": -0.05, "p_value": None,
                                "unit": "cosine", "lower_is_better": True})
    (tmp_path / "eval" / "results.json").write_text(json.dumps(res))
    page = write_report(tmp_path).read_text()
    row = page.split("cannot tell apart")[1].split("</tr>")[0]
    assert "60.0" in row and '<span class="pos">-20.0</span>' in row and '<span class="pos">-2.0</span>' in row
    assert "<td>0.961</td><td>0.902</td><td>-0.059</td><td>[-0.070, -0.050]</td>" in page


def _fake_attributes(out: Path) -> None:
    rows = []
    for k, (cat, attr) in enumerate(MMVP_CATEGORIES):
        rows.append({"attribute": attr, "category": cat, "chance": 100 / len(FINE_ATTRIBUTES[attr]),
                     "cue_share": 0.1 + 0.01 * k, "trace_before": 40.0, "patches": 90.0, "gain": 2.0 + k,
                     "gain_control": 1.0, "gain_beyond_control": 1.0 + k, "judge_real": 95.0,
                     "drawn_oracle": 80.0, "drawn_stage1": 30.0, "drawn_stage2": 35.0,
                     "mmvp_large": {"baseline": 10.0, "enhanced": 14.0, "control": 11.0}})
    large = {"enhanced": {"average": 14.0, "n_pairs": 450}, "control": {"average": 11.0, "n_pairs": 450},
             "enhanced_minus_control": {"delta": 3.0, "ci_low": 0.5, "ci_high": 5.5}}
    (out / "eval" / "attributes.json").write_text(json.dumps({"rows": rows, "large_benchmark": large}))


def test_report_per_attribute_table_chart_and_large_benchmark_answer(tmp_path):
    _fake_run(tmp_path, usage=0.12)
    _fake_attributes(tmp_path)
    page = write_report(tmp_path)
    p = _parse(page)
    assert "attributes.png" in p.imgs and (tmp_path / "attributes.png").is_file()
    text = " ".join(p.text)
    # The answer (first) names the large benchmark's paired interval against the control.
    assert text.index("+3.0 points, paired 95 % CI [+0.5, +5.5] (the interval excludes zero)") \
        < text.index("Per attribute")
    html = page.read_text()
    table = html.split("Per attribute")[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + len(MMVP_CATEGORIES)
    # One row per attribute: cue share, trace, gain beyond the control, oracle drawability.
    first = table.split("<tr>")[2]
    assert "<th>direction</th>" in first and "<td>0.10</td>" in first and "<td>80.0</td>" in first
    assert '<span class="pos">+3.0</span>' in first  # MMVP-large enhanced - control
