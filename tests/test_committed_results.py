"""The committed results: reports/ is what its runs give, the README's Result tables quote those runs, and
benchmarks/README.md's tables quote the JSONs committed beside them."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from analysis import report, runs, stats
from benchmarks import probe_effects
from core.config import SCALES, Config
from core.fastpath import GroupNorm
from core.fidelity import real_floor

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


RESULT_METRICS = ("fid", "nll_bpd", "eps_mse")  # the columns of the README's Result tables, in order
SIGNED = r"([+\u2212]?[\d.]+)"  # a number as the README writes it: a typographic minus, a plus on differences


def plain(shown: str) -> str:
    """A number of the README in ASCII: its minus sign as '-', a leading '+' dropped."""
    return shown.replace("\u2212", "-").lstrip("+")


def digits_as(value: float, shown: str) -> str:
    """``value`` written with as many decimals as the README's ``shown``."""
    return f"{value:.{len(shown.partition('.')[2])}f}"


def test_the_committed_report_and_the_readmes_result_are_what_the_committed_runs_give(tmp_path):
    """reports/ is generated, never edited: the one command makes the committed report.md from the committed
    runs.json, and every number of the README's Result tables (means and intervals, effects with their
    intervals and Holm p, the budget seed by seed) is what those runs give, to the digits shown."""
    docs = runs.from_dump(REPO / "reports" / "runs.json")
    report.build(docs, tmp_path)
    assert (tmp_path / "report.md").read_text() == (REPO / "reports" / "report.md").read_text()
    table = runs.runs_table([d for d in docs if d["status"] == "COMPLETED"])
    result = README.read_text().split("### Result: the `small` OFAT sweep")[1].split("\n## ")[0]
    compared = []
    for label, seeds, *cells in re.findall(r"^\| ([a-z][^|]*?) \| (\d+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$",
                                           result, re.M):
        for metric, cell in zip(RESULT_METRICS, cells):
            row = stats.summary(table, metric).set_index("cell").loc[label.split(" (")[0]]
            mean, half = cell.split(" \u00b1 ")
            assert (int(seeds), mean, half) == (row.n, digits_as(row["mean"], mean),
                                                digits_as((row.ci_high - row.ci_low) / 2, half)), (label, metric)
            compared.append(cell)
    effects = {m: stats.paired_effects(table, m).set_index("cell") for m in RESULT_METRICS}
    for label, n, *cells in re.findall(r"^\| ([a-z][^|]*?) \(n=(\d+)\) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$",
                                       result, re.M):
        for metric, cell in zip(RESULT_METRICS, cells):
            *shown, p = re.fullmatch(rf"\**{SIGNED} \[{SIGNED}, {SIGNED}\], p = ([\d.e-]+)\**", cell).groups()
            row = effects[metric].loc[label]
            assert (int(n), *map(plain, shown), p) == (row.n, *(digits_as(row[k], s) for k, s in zip(
                ("diff", "ci_low", "ci_high"), shown)), f"{row.p_holm:.2g}"), (label, metric)
            assert cell.startswith("**") == (row.p_holm < 0.05), (label, metric)  # bold: significant after Holm
            compared.append(cell)
    full, half = (table[table.cell == cell].set_index("seed") for cell in ("baseline", "train_steps=300"))
    for name, metric in (("FID", "fid"), ("nll_bpd", "nll_bpd"), ("eps-MSE", "eps_mse")):
        shown = re.search(rf"^\| {name}, half \u2212 full \| (.+) \|$", result, re.M).group(1).split(" | ")
        assert list(map(plain, shown)) == [digits_as(half.loc[seed, metric] - full.loc[seed, metric], s)
                                           for seed, s in enumerate(shown)], name
        compared.append(name)
    assert len(compared) == 7 * 3 + 6 * 3 + 3  # every row of the three tables was found and compared


def measured_values(folder: Path):
    """Every number in the JSONs under ``folder``, as recorded and times 100 (a share as a percentage), and each
    class's percentage of a class histogram (a list of counts); as magnitudes, for the tables' signs stand apart."""
    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            if len(node) == 10 and all(isinstance(x, int) for x in node) and sum(node):
                yield from (100 * x / sum(node) for x in node)
            for value in node:
                yield from walk(value)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            yield from (abs(node), 100 * abs(node))  # the tables' signs are read apart from their digits
    for path in folder.rglob("*.json"):
        yield from walk(json.loads(path.read_text()))


def recorded_as_shown(folder: Path) -> dict[int, set[str]]:
    """decimals -> every value of :func:`measured_values` written with that many decimals (0 to 8)."""
    values = list(measured_values(folder))
    return {decimals: {f"{v:.{decimals}f}" for v in values} for decimals in range(0, 9)}


@pytest.mark.parametrize("name, seeds", [("seed2-3000/effects.json", 3), ("seed3-3000/effects.json", 4),
                                         ("seed3-3000/effects-vs-cooldown.json", 4)])
def test_the_committed_probe_effects_are_what_their_probes_give(name, seeds, tmp_path, monkeypatch):
    """benchmarks/cpu-probe/seed*-3000/effects*.json (the cool-down against the constant rate, and EMA against the
    cool-down's trained weights, seeds paired) are what probe_effects.py gives on the committed probe JSONs they
    name, with every cell at every seed."""
    committed = json.loads((REPO / "benchmarks" / "cpu-probe" / name).read_text())
    monkeypatch.chdir(REPO)  # the files are named as the command line gave them, from the repository's root
    files = list(dict.fromkeys(run["file"] for run in committed["runs"]))
    probe_effects.main([*files, "--step", str(committed["step"]), "--baseline", committed["baseline"],
                        "--out", str(tmp_path / "effects.json")])
    assert json.loads((tmp_path / "effects.json").read_text()) == committed
    assert {effect["n"] for effect in committed["effects"]} == {seeds} and len(committed["effects"]) == 3 * 3


def test_every_decimal_in_the_probe_tables_is_a_committed_measurement():
    """benchmarks/README.md's tables, and the README's summary of them ("What the probes found so far"), quote
    the JSONs committed under benchmarks/ (the probes' curves, the samplers' scores): each number with decimals
    there is some recorded number rounded to the digits shown. A one-off scan found seven cells misrounded in the
    last digit; this keeps the tables from drifting again. (The summary's first column, where real digits'
    scores stand as labels, is left out.)"""
    shown_as = recorded_as_shown(REPO / "benchmarks")
    tables = [line for line in (REPO / "benchmarks" / "README.md").read_text().splitlines() if line.startswith("|")]
    summary = README.read_text().split("**What the probes found so far.**")[1].split("\n- ")[0]
    tables += ["|".join(line.split("|")[2:]) for line in summary.splitlines() if line.startswith("|")]
    numbers = [(number, line) for line in tables for number in re.findall(r"(?<![\w.])\d+\.\d+", line)]
    assert len(numbers) > 350  # the probe tables are there to be checked
    unmeasured = [(number, line) for number, line in numbers if number not in shown_as[len(number.split(".")[1])]]
    assert unmeasured == []


def calibration_rows(name: str) -> dict:
    """The rows of a committed ``core.evaluation calibrate --out`` JSON, keyed by (sigma or None, N)."""
    rows = json.loads((REPO / "benchmarks" / "calibration" / name).read_text())["rows"]
    sigma = [re.search(r"N\(0, ([\d.]+)\^2\)", row["comparison"]) for row in rows]
    return {(float(s.group(1)) if s else None, row["n"]): row for s, row in zip(sigma, rows)}


def test_the_readmes_calibration_is_what_the_committed_calibration_gives():
    """The README's Calibration table (FID, KID, precision, recall of real and noisy digits) and what it says real
    digits score on the digit rule quote the two committed calibrations, to the digits shown, and its FID floor at
    N = 1,000 is what ``real_floor`` gives. Its KIDs of noisy digits had drifted from what the code gives (5.7 and
    112.4 for 6.2 and 113.0) before this test."""
    evaluation = README.read_text().split("## Evaluation: FID on a pinned MNIST classifier")[1].split("\n## ")[0]
    table = calibration_rows("real-digits-256-to-10000.json")
    lines = re.findall(r"^\| (?:real train vs real test|test \+ N\(0, ([\d.]+)\u00b2\) vs test) \| ([\d,]+) \| "
                       r"([\d.]+) \| (-?[\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", evaluation, re.M)
    for sigma, n, *shown in lines:
        row = table[(float(sigma) if sigma else None, int(n.replace(",", "")))]
        assert shown == [digits_as(row[k], s) for k, s in zip(("fid", "kid_mean", "precision", "recall"), shown)]
    assert len(lines) == len(table) == 6
    digits = calibration_rows("real-digits-1000-5000.json")
    rule = re.search(r"1,000 real training digits score \*\*([\d.]+)\*\* with classes\s+at ([\d.]+)\u2013([\d.]+)%; "
                     r"5,000 score \*\*([\d.]+)\*\* with classes at ([\d.]+)\u2013([\d.]+)%\. .*?Test digits with "
                     r"\u03c3 = 0.3 noise still score ([\d.]+) \(FID\s+(\d+)\)", evaluation, re.S).groups()
    recorded = [(digits[(None, n)], key) for n in (1000, 5000)
                for key in ("classifier_score", "min_class_share", "max_class_share")]
    recorded += [(digits[(0.3, 5000)], "classifier_score"), (digits[(0.3, 5000)], "fid")]
    assert list(rule) == [f"{(100 if 'share' in key else 1) * row[key]:.{len(s.partition('.')[2])}f}"
                          for (row, key), s in zip(recorded, rule)]
    floor = re.search(r"the same comparison its samples get \(([\d.]+) at\s+N = 1,000", evaluation).group(1)
    assert floor == digits_as(real_floor(1000), floor)  # what every run at N = 1,000 records as info.fid_floor


def test_the_readmes_evaluation_timings_are_what_the_committed_benchmark_rows_say():
    """The README's timings of torch-fidelity's call against ``compare`` (one and two threads) quote the rows
    ``benchmarks/prc_cache.py --out`` committed, to the digits shown, and both rows found the values equal."""
    evaluation = " ".join(README.read_text().split("## Evaluation: FID on a pinned MNIST classifier")[1].split(
        "\n## ")[0].split("\n"))
    shown = re.search(r"prc_cache.py --threads 1 .*?: ([\d.]+) s a call by torch-fidelity, ([\d.]+) s by `compare`; "
                      r"with `--threads 2` \(`prc-cache-threads-2.json`\), ([\d.]+) s and ([\d.]+) s\.",
                      evaluation).groups()
    rows = [json.loads((REPO / "benchmarks" / f"prc-cache-threads-{t}.json").read_text()) for t in (1, 2)]
    recorded = [row[key] for row in rows for key in ("torch_fidelity_s", "cached_radii_s")]
    assert list(shown) == [digits_as(value, s) for value, s in zip(recorded, shown)]
    assert [(row["threads"], row["bitwise_equal"]) for row in rows] == [(1, True), (2, True)]


SAMPLER_ROWS = {  # the README's DDIM-50 against ancestral-1000 table: its labels -> the calibration's rows
    "DDIM-50 (eta 0, x\u2080 clipped)": "DDIM-50 vs test",
    "ancestral-1000 (the seed's formula, no clipping)": "ancestral-1000 vs test",
    "DDIM-50 samples against ancestral-1000 samples": "DDIM-50 vs ancestral-1000 (same model)"}


def test_the_readmes_sampler_table_is_what_the_committed_calibration_of_its_checkpoint_gives():
    """The README's DDIM-50 against ancestral-1000 table, its floor and its "% lower FID" quote the committed
    calibration, and it names the model that calibration sampled: the `small` baseline at its last step. Before
    this test the table quoted a 400-step model, from before `small` trained 600 steps, and no file kept it."""
    evaluation = " ".join(README.read_text().split("## Evaluation: FID on a pinned MNIST classifier")[1].split(
        "\n## ")[0].split("\n"))  # one line: the prose's figures may wrap
    record = json.loads((REPO / "benchmarks" / "calibration" / "ddim50-vs-ancestral-small-seed0.json").read_text())
    rows = {row["comparison"]: row for row in record["rows"]}
    for label, comparison in SAMPLER_ROWS.items():
        shown = re.search(rf"\| {re.escape(label)} \| ([\d.]+) \| (-?[\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
                          evaluation).groups()
        assert list(shown) == [digits_as(rows[comparison][k], s)
                               for k, s in zip(("fid", "kid_mean", "precision", "recall"), shown)]
    trained, step = Config(**record["checkpoint"]["config"]), record["checkpoint"]["step"]
    assert (trained, step) == (Config(**SCALES["small"], seed=trained.seed), trained.train_steps)
    assert f"the `small` baseline, {step} steps, seed {trained.seed}" in evaluation
    assert f"The real-vs-real floor at N = 256 is {rows['real train vs real test']['fid']:.1f}." in evaluation
    lower = 1 - rows["DDIM-50 vs test"]["fid"] / rows["ancestral-1000 vs test"]["fid"]
    scores = [rows[comparison]["classifier_score"] for comparison in ("DDIM-50 vs test", "ancestral-1000 vs test")]
    assert f"it scores {lower:.0%} lower FID than the seed's sampler, and a classifier score of {scores[0]:.2f} " \
           f"against {scores[1]:.2f}." in evaluation


def test_the_sampler_table_reproduced_bit_for_bit_from_a_retrained_checkpoint():
    """The same `small` run trained again in a later session and scored by the same command gave every row of the
    committed calibration exactly, as the README says; only the checkpoint files' hashes differ (a checkpoint keeps
    the logged throughput)."""
    folder = REPO / "benchmarks" / "calibration"
    first, again = (json.loads((folder / f"ddim50-vs-ancestral-small-seed0{suffix}.json").read_text())
                    for suffix in ("", "-retrained"))
    assert again["rows"] == first["rows"] and len(first["rows"]) == 6
    same = {key: again["checkpoint"][key] == first["checkpoint"][key] for key in ("config", "step", "sha256")}
    assert same == {"config": True, "step": True, "sha256": False}

    def options(command: str) -> list[str]:  # all but the checkpoint's and the result's paths
        return [word for word in command.split() if not word.endswith((".pt", ".json"))]
    assert options(again["command"]) == options(first["command"])
    evaluation = " ".join(README.read_text().split("## Evaluation: FID on a pinned MNIST classifier")[1].split(
        "\n## ")[0].split("\n"))
    assert "gave every row of the committed JSON, bit for bit" in evaluation


def test_every_number_in_the_speed_tables_is_a_committed_measurement():
    """The README's Speed tables quote benchmarks/results.json and the JSONs of benchmarks/device/: each number
    there (but in a row's first cell, its label) is a recorded value rounded to the digits shown. Left out: the
    H100's eager rows, whose JSON was not kept, as the README says; the eager `paper` projection is a product of
    its JSON's step time and the paper scale's steps."""
    shown_as = recorded_as_shown(REPO / "benchmarks")
    speed = README.read_text().split("\n## Speed\n")[1].split("\n## ")[0].splitlines()
    numbers, group = [], ""
    for line, below in zip(speed, speed[1:] + [""]):
        if not line.startswith("| ") or below.startswith("|---"):  # not a row, or a table's header
            continue
        label, *cells = line.split("|")[1:]
        group = label.strip() or group  # a row with an empty first cell belongs to the group above it
        if not group.startswith(("H100, eager", "eager training step")):
            shown = re.findall(r"(?<![\w.,])\d[\d,]*(?:\.\d+)?", "|".join(cells))  # 22,152 or 0.63
            numbers += [(number.replace(",", ""), line) for number in shown]
    assert len(numbers) > 60  # the tables are there to be checked
    assert [(n, line) for n, line in numbers if n not in shown_as[len(n.partition(".")[2])]] == []
    eager_ms = json.loads((REPO / "benchmarks" / "device" / "paper-h200-projected.json").read_text())["eager_step_ms"]
    projection = f"| eager training step ({eager_ms:.1f} ms), projected from 300 steps | {eager_ms * 46.9:.0f} s |"
    assert any(line.startswith(projection) for line in speed)


def test_the_readmes_group_norm_figures_are_the_committed_benchmarks():
    """The README's GroupNorm-route figures quote benchmarks/group-norm.json, which found the route's outputs equal
    to the native kernel's exactly where core.fastpath.GroupNorm takes it (groups of up to 8 channels)."""
    measured = json.loads((REPO / "benchmarks" / "group-norm.json").read_text())
    assert all(row["equal"] == (row["channels_per_group"] <= GroupNorm.MAX_CHANNELS_PER_GROUP)
               for row in measured["group_norm"])
    assert all(row["equal"] for row in measured["network"])
    first, (at_64, at_256) = measured["group_norm"][0], measured["network"]
    bullet = README.read_text().split("- The GroupNorm route")[1].split("\n- ")[0]
    quoted = (measured["command"],
              f"(64, 32, 28, 28) {first['native_ms']:.1f} ms natively against {first['route_ms']:.1f} ms",
              f"batch 64 {at_64['route_off_s']:.3f} s against {at_64['route_on_s']:.3f} s ({at_64['speedup']:.2f}×)",
              f"at batch 256 {at_256['speedup']:.2f}×")
    flat = " ".join(bullet.split())
    assert all(q in flat for q in quoted), quoted
