"""Plot the mean ELBO term per timestep of several evaluations on one log-scale figure (e.g. before / after).

    python scripts/plot_elbo_terms.py --report A/eval/report.json --label "main job" \
        --report B/eval/report.json --label recipe --output docs/elbo_terms_before_after.png

Each `report.json` is one written by `scripts/evaluate.py` for a DDPM (its `likelihood.terms_mean_per_timestep`).
The x axis is t / T, so that models with different T share it; each label is followed by T, the full bound and its
decoder term L_0, in bits/dim. With different T the per-term values are not comparable one to one (a step of
T = 250 covers four of T = 1000): compare the curves' shapes and the totals in the legend.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_ddpm_ncsn.plots import line_plot


def series_of(report: dict, label: str) -> tuple[str, list[tuple[float, float]]]:
    """The legend text and the (t / T, mean term) points of one evaluation report."""
    likelihood = report["likelihood"]
    terms = likelihood["terms_mean_per_timestep"]
    num_timesteps = len(terms)
    name = (
        f"{label} (T = {num_timesteps}: {likelihood['bits_per_dim']:.2f} bits/dim, "
        f"L_0 = {likelihood['decoder_bpd']:.2f})"
    )
    return name, [(t / num_timesteps, value) for t, value in enumerate(terms)]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="append", required=True, help="an evaluation's report.json (repeat)")
    parser.add_argument("--label", action="append", required=True, help="its legend label (one per --report)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if len(args.report) != len(args.label):
        parser.error(f"{len(args.report)} --report but {len(args.label)} --label: give one label per report")
    series = dict(
        series_of(json.loads(Path(path).read_text()), label)
        for path, label in zip(args.report, args.label, strict=True)
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    line_plot(
        series,
        output,
        title="Mean ELBO term per timestep, held-out digits (bits/dim, log scale)",
        xlabel="t / T (0 = decoder term L_0)",
        ylabel="bits/dim",
        log_y=True,
    )
    return output


if __name__ == "__main__":
    print(main())
