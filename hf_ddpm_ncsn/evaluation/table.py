"""The printed table of an evaluation report: the headline numbers, each beside its real-vs-real baseline (the
classifier Fréchet distance also as a ratio to the baseline's mean over its draws, with the spreads of both), and the
bits/dim beside the reference models' on the same held-out images."""

from __future__ import annotations

from typing import Any

from .likelihood_report import BASELINE_MODELS, smoothing_label

_Row = tuple[str, str, str]
_HISTOGRAM_LABELS = {
    "per_pixel_histogram": "per-pixel histogram",
    "per_pixel_histogram_add_one": "per-pixel histogram",
    "shared_histogram": "shared histogram",
}


def _number(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return ""
    text = f"{value:.4g}"
    return text if spread is None else f"{text} ± {spread:.2g}"


def format_report(report: dict[str, Any]) -> str:
    """A short aligned table of the headline numbers, each beside its real-vs-real baseline.

    Args:
        report (`dict`): a report of `evaluate`.
    """
    elbo, quality = report.get("likelihood", {}), report.get("sample_quality", {})
    classifier, inception = report.get("classifier", {}), report.get("inception", {})
    baselines = report.get("likelihood_baselines", {})
    rows: list[_Row] = [("metric", "value", "real-vs-real baseline")]
    rows += _ode_rows(report.get("ode_likelihood", {}))
    rows += _likelihood_rows(elbo)
    rows += _likelihood_baseline_rows(baselines)
    rows += _classifier_rows(quality, classifier)
    rows += _memorisation_rows(quality)
    rows += _inception_rows(inception)
    notes = [section["skipped"] for section in (elbo, classifier, inception) if "skipped" in section]
    notes += [baselines["description"]] if "description" in baselines else []
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([_heading(report), *table, *(f"note: {note}" for note in notes)])


def _heading(report: dict[str, Any]) -> str:
    counts = report.get("counts", {})
    draws = report.get("sample_quality", {}).get("classifier_real_baseline_draws", {}).get("num_draws", 1)
    return (
        f"Evaluation of {report.get('pipeline') or 'a pipeline'} ({report.get('pipeline_class')}) on "
        f"{report.get('dataset')}, seed {report.get('seed')}: {counts.get('samples')} samples vs "
        f"{counts.get('held_out')} held-out images; baseline: {counts.get('baseline_train_images')} training images"
        + (f" (draw 0 of {draws})" if draws > 1 else "")
    )


def _cost(section: dict[str, Any], key: str = "unet_evaluations", unit: str = "UNet evaluations") -> str:
    """ ", <evaluations> <unit>, <seconds> s" of a likelihood section (empty for a report without them)."""
    if key not in section or "seconds" not in section:
        return ""
    return f", {section[key]} {unit}, {section['seconds']:.0f} s"


def _ode_rows(ode: dict[str, Any]) -> list[_Row]:
    if "bits_per_dim" not in ode:
        return []
    name = (
        f"bits_per_dim_ode (probability-flow ODE, {ode['num_images']} held-out images, {ode['method']} "
        f"rtol={ode['rtol']:g}{_cost(ode, 'nfe', 'NFE')})"
    )
    return [(name, _number(ode["bits_per_dim"], ode["bits_per_dim_stderr"]), "")]


def _likelihood_rows(elbo: dict[str, Any]) -> list[_Row]:
    if "bits_per_dim" not in elbo:
        return []
    name = f"bits_per_dim (full ELBO, {elbo['num_images']} held-out images, T={elbo['num_timesteps']}{_cost(elbo)})"
    rows = [(name, _number(elbo["bits_per_dim"], elbo["bits_per_dim_stderr"]), "")]
    stratified = elbo.get("stratified")
    if stratified is not None:
        name = f"bits_per_dim_stratified (K={stratified['num_strata']}, difference to full"
        name += f" {_number(stratified['difference_from_full'], stratified['difference_stderr'])}"
        name += f"{_cost(stratified)})"
        rows.append((name, _number(stratified["bits_per_dim"], stratified["bits_per_dim_stderr"]), ""))
    return rows


def _likelihood_baseline_rows(baselines: dict[str, Any]) -> list[_Row]:
    rows: list[_Row] = []
    for model in (model for model in BASELINE_MODELS if model in baselines):
        entry, spread = baselines[model], baselines[model]["bits_per_dim_stderr"]
        if "smoothing" in entry:
            name = f"{_HISTOGRAM_LABELS[model]}, {smoothing_label(entry['smoothing'])}"
        else:  # the uniform model gives every image the same log2(L): no spread to show
            name, spread = f"uniform over the {entry['num_levels']} levels", None
        rows.append((f"bits_per_dim reference: {name}", _number(entry["bits_per_dim"], spread), ""))
    return rows


def _classifier_rows(quality: dict[str, Any], classifier: dict[str, Any]) -> list[_Row]:
    rows: list[_Row] = []
    if "classifier_frechet_distance" in quality:
        rows += [
            (
                "classifier_frechet_distance",
                _number(quality["classifier_frechet_distance"]),
                _number(quality["classifier_frechet_distance_real_baseline"]),
            ),
            *_frechet_spread_rows(quality),
            (
                "classifier_kid",
                _number(quality["classifier_kid"], quality["classifier_kid_std"]),
                _number(quality["classifier_kid_real_baseline"], quality["classifier_kid_real_baseline_std"]),
            ),
            *_kid_draw_rows(quality),
            (
                "class_coverage (entropy / log K)",
                _number(quality["class_coverage"]),
                _number(quality["class_coverage_real_baseline"]),
            ),
        ]
    if "held_out_accuracy" in classifier:
        rows.append(("classifier held-out accuracy", _number(classifier["held_out_accuracy"]), ""))
    return rows


def _frechet_spread_rows(quality: dict[str, Any]) -> list[_Row]:
    """Indented rows under the Fréchet distance: its ratio to the baseline's mean over the draws (± what the draws'
    spread implies, beside that mean ± the draws' standard deviation), and the held-out reference's bootstrap."""
    if quality.get("classifier_frechet_distance_ratio") is None:
        return []
    draws = quality["classifier_real_baseline_draws"]["num_draws"]
    rows = [
        (
            f"  ratio to the baseline mean ({draws} draws: mean ± std)"
            if draws > 1
            else "  ratio to the baseline (1 draw)",
            _number(quality["classifier_frechet_distance_ratio"], quality["classifier_frechet_distance_ratio_std"]),
            _number(
                quality["classifier_frechet_distance_real_baseline_mean"],
                quality["classifier_frechet_distance_real_baseline_std"],
            ),
        )
    ]
    bootstrap = quality.get("classifier_reference_bootstrap", {})
    if bootstrap.get("frechet_distance_std") is not None:
        ratio_spread = bootstrap.get("frechet_distance_ratio_std")
        name = (
            f"  ± from the {bootstrap['num_held_out_images']} held-out images (bootstrap, {bootstrap['resamples']}"
            f" resamples{'' if ratio_spread is None else f'; ratio ± {ratio_spread:.2g}'})"
        )
        rows.append(
            (
                name,
                f"± {bootstrap['frechet_distance_std']:.2g}",
                f"± {bootstrap['frechet_distance_real_baseline_std']:.2g}",
            )
        )
    return rows


def _kid_draw_rows(quality: dict[str, Any]) -> list[_Row]:
    draws = quality.get("classifier_real_baseline_draws", {})
    if draws.get("kid_std") is None:
        return []
    return [
        (f"  over {draws['num_draws']} baseline draws (mean ± std)", "", _number(draws["kid_mean"], draws["kid_std"]))
    ]


def _memorisation_rows(quality: dict[str, Any]) -> list[_Row]:
    nearest = quality.get("nearest_train_distance")
    if nearest is None:
        return []
    name = f"nearest_train_distance median (ratio {_number(nearest['ratio']['median'])})"
    return [(name, _number(nearest["samples"]["median"]), _number(nearest["held_out"]["median"]))]


def _inception_rows(inception: dict[str, Any]) -> list[_Row]:
    if "fid" not in inception:
        return []
    return [
        ("inception_fid", _number(inception["fid"]), _number(inception["fid_real_baseline"])),
        (
            "inception_kid",
            _number(inception["kid"], inception["kid_std"]),
            _number(inception["kid_real_baseline"], inception["kid_real_baseline_std"]),
        ),
    ]
