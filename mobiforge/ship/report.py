"""Ship's model card and reports (the run's own plots are ``mobiforge.plots``).

``write_ship_report`` writes ``model_card.json`` (what an app needs: file, classes, preprocessing constants, and the
evidence: accuracy through the runtime, size, latency, budget verdicts, versions, the command), ``report.md`` with
its PNGs beside it, and ``report.html`` with the same content and the PNGs inlined, so it opens anywhere alone.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import html
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

from mobiforge import __version__
from mobiforge.backend_api import get_backend
from mobiforge.card import (
    CARD_FILE,
    CardAccuracy,
    CardArtifact,
    CardBudget,
    CardCoreML,
    CardInput,
    CardLatency,
    CardModel,
    CardWeb,
    ModelCard,
)
from mobiforge.checkpoint import Checkpoint
from mobiforge.config import BUILTIN_DATASETS, ShipConfig
from mobiforge.data import data_root
from mobiforge.export import ArtifactReport, about
from mobiforge.files import write_atomic
from mobiforge.models.base import Preprocess
from mobiforge.options import to_argv
from mobiforge.paths import shareable, without_local_paths
from mobiforge.plots import plot_confusion, plot_mistakes, pyplot
from mobiforge.ship.config import CORE_ML
from mobiforge.ship.health import HEALTH_FILE, SHOWN_LEAKS, gate_images, without_leaks
from mobiforge.ship.policy import FILE_OVERHEAD
from mobiforge.ship.shortfall import headline, shortfall, why_nothing_shipped
from mobiforge.ship.snippets import android_snippet, ios_snippet
from mobiforge.ship.stages import WEB_SCREENSHOT, left_out_of_gate
from mobiforge.ship.state import CORE_ML_PACKAGE, SEARCH, TEACHER, WEB_PAGE, Candidate, Row, Rung, ShipState
from mobiforge.ship.subsets import more_images_pay


def versions(runtime: str) -> dict[str, str]:

    found = {
        "mobiforge": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    backend = get_backend(runtime)
    for package in filter(None, (backend.package, backend.sdk_package)):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # the runtime is an optional extra
            found[package] = importlib.metadata.version(package)
    return found


# Shown even at their defaults: what the run was asked for. Every other field is shown where it differs.
COMMAND_ALWAYS = ("data", "max_size", "max_latency_ms", "runtime", "threads", "time_budget_s", "teacher")
COMMAND_PATHS = ("data", "teacher", "out")  # written without the local absolute part (paths.shareable)


def ship_command(config: ShipConfig) -> str:
    """The CLI command that reruns (and so resumes) this ship run: every setting the resume compares, shell-quoted."""

    def shared(name: str, text: str) -> str:
        local = name in COMMAND_PATHS and text not in ("auto", "none", *BUILTIN_DATASETS)
        return shareable(text) if local else text

    return shlex.join(["mobiforge", "ship", *to_argv(config, always=COMMAND_ALWAYS, rewrite=shared)])


def _core_ml_card(package: ArtifactReport) -> CardCoreML:
    return CardCoreML(
        file=Path(package.path).name,
        bytes=package.file_bytes,
        precision=package.precision,
        ran_on_this_host=package.ran_in_runtime,
        top1_pytorch_as_it_computes=package.top1,
        images=package.images,
        checks=package.notes,
    )


def _web_card(page: ArtifactReport, run_dir: Path) -> CardWeb:
    return CardWeb(
        folder=Path(page.path).name,
        model_bytes=page.file_bytes,
        precision=page.precision,
        images=page.images,
        top1_in_runtime=page.top1,
        page=page.sdk or "",
        top1_in_page=page.sdk_top1,
        agreement=page.sdk_agreement,
        clear_disagreements=page.sdk_clear_disagreements,
        top1_in_page_full_size=page.sdk_app_top1,
        passed=page.passed,
        screenshot=WEB_SCREENSHOT if (run_dir / WEB_SCREENSHOT).is_file() else "",
    )


def _web_line(web: CardWeb) -> str:
    """The report's line on the web folder: where it is, how to open it on a phone, and its gate in the browser."""
    where = (f"- web: [`{web.folder}/`]({web.folder}/index.html) ({web.precision}, {web.model_bytes / 1e6:.3f} MB "
             "model) beside it, a page that "
             "runs the model in the browser; `mobiforge serve RUN_FOLDER --lan` opens it on a phone")  # fmt: skip
    if web.top1_in_page is None:
        return f"{where}; not run in a browser here ({web.page or 'no Chromium'})"
    ties = (
        " (those that differ are near ties)" if (web.agreement or 0.0) < 100.0 and not web.clear_disagreements else ""
    )
    return (
        f"{where}. In {web.page}: val top-1 {web.top1_in_page:.2f}% on {web.images} images, the same top-1 as LiteRT "
        f"in Python on the same file on {web.agreement or 0.0:.2f}%{ties}; {web.top1_in_page_full_size or 0.0:.2f}% "
        f"on the full-size photos, resized by the page: {'passed' if web.passed else '**failed**'}"
    )


def _card_input(preprocess: Preprocess, pixels: bool) -> CardInput:
    size = preprocess.img_size
    return CardInput(
        input_shape=[1, size, size, 3] if pixels else [1, 3, size, size],
        layout="NHWC" if pixels else "NCHW",
        dtype="uint8" if pixels else "float32",
        resize=preprocess.resize_size,
        crop=size,
        crop_pct=preprocess.crop_pct,
        interpolation=preprocess.interpolation,
        scale="none: RGB pixels 0-255, normalised inside the graph" if pixels else "RGB / 255",
        mean=list(preprocess.mean),
        std=list(preprocess.std),
    )


def model_card(config: ShipConfig, state: ShipState, row: Row, artifact: Path | None) -> ModelCard:
    """What an app developer needs to use the artifact, and the evidence that it meets the budget."""
    assert row.exported is not None and row.trained is not None
    exported, trained, candidate = row.exported.chosen, row.trained, row.candidate
    checkpoint = Checkpoint.load(trained.checkpoint)
    preprocess = checkpoint.preprocess
    latency = exported.latency_ms[str(config.threads)]
    verdicts = row.exported.verdicts
    file = artifact.name if artifact else Path(exported.path).name
    described = about(config, config.data, checkpoint.named_classes())
    return ModelCard(
        name=described.name,
        version=described.version,
        license=described.license or "not stated",
        description=described.description,
        intended_use=_intended_use(checkpoint.named_classes(), state),
        limitations=_limitations(config, state, exported, trained.images),
        shipped=artifact is not None,
        artifact=CardArtifact(file, config.runtime, exported.precision, exported.float_modules, exported.file_bytes),
        model=CardModel(
            candidate=candidate.name,
            spec=checkpoint.spec,
            source=candidate.source,
            params=candidate.params,
            macs=candidate.macs,
            distilled=trained.distilled,
            epochs=trained.epochs_run,
        ),
        classes=checkpoint.classes,
        preprocessing=_card_input(preprocess, exported.pixel_input),
        accuracy=CardAccuracy(
            images=exported.images,
            top1_in_runtime=exported.top1,
            top1_fp32_pytorch=exported.torch_fp32_top1,
            drop=exported.drop,
            sdk=exported.sdk,
            top1_in_sdk=exported.sdk_top1,
            sdk_agreement=exported.sdk_agreement,
            sdk_clear_disagreements=exported.sdk_clear_disagreements,
            top1_in_sdk_app=exported.sdk_app_top1,
            data=without_local_paths(state.survey.description, config.data),
        ),
        latency_ms=CardLatency(latency["median"], latency["p90"], batch=1, threads=config.threads),
        budget=CardBudget(
            max_size_bytes=config.max_size,
            max_latency_ms=config.max_latency_ms,
            max_drop=config.max_drop,
            time_budget_s=config.time_budget_s,
            time_used_s=round(state.elapsed(), 1),
            verdicts=verdicts,
            met=all(verdicts.values()),
        ),
        versions=versions(config.runtime),
        command=ship_command(config),
        created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


def _intended_use(classes: list[str], state: ShipState) -> str:
    return (
        f"Tells which of {len(classes)} classes a photo shows, on a phone or an edge device, for photos like the "
        f"{state.survey.train_images} it was trained on. Not for decisions about people, nor for anything where a "
        "wrong answer does harm without a person checking it."
    )


def _limitations(config: ShipConfig, state: ShipState, exported: Any, images: int | None = None) -> list[str]:
    """What a reader must know before relying on the model: the card's standard caveats, with this run's figures
    (``images``: the training photos it learnt from, where a subset of the folder's)."""
    survey = state.survey
    learnt = survey.train_images
    if images is not None and images < survey.train_images:
        learnt = f"{images} (a stratified subset of the folder's {survey.train_images})"
    limits = [
        f"It knows only its {len(survey.classes)} classes and always answers one of them: a photo of anything else "
        "gets a wrong class, often with high confidence.",
        f"It learnt from {learnt} training images and was measured on {survey.val_images} validation "
        "images from the same source: photos unlike them (other cameras, light, backgrounds, framing) may score "
        "lower than the figures here.",
        f"Latency was measured on this machine's CPU ({versions(config.runtime)['machine']}), not on a phone: a "
        "phone's figure differs.",
    ]
    if exported.drop > 0:
        limits.append(f"int8 costs {exported.drop:.2f} top-1 points against the fp32 model on the validation images.")
    return limits


def plot_candidates(rows: list[Row], config: ShipConfig, path: Path) -> Path:
    """Top-1 through the runtime against measured latency for every trained candidate, budget drawn in."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if not row.exported:
            continue
        exported = row.exported.chosen
        latency = exported.latency_ms[str(config.threads)]["median"]
        colour = "tab:green" if row.exported.met else "tab:red"
        axis.scatter(latency, exported.top1, s=60, color=colour, zorder=3)
        label = f"{row.candidate.name}\n{exported.file_bytes / 1e6:.2f} MB {exported.precision}"
        axis.annotate(label, (latency, exported.top1), textcoords="offset points", xytext=(6, 4), fontsize=7)
    axis.axvline(
        config.max_latency_ms, color="tab:red", linestyle="--", label=f"latency budget {config.max_latency_ms:g} ms"
    )
    axis.set_xscale("log")
    axis.set(
        xlabel=f"median latency, batch 1, {config.threads} thread(s), {config.runtime} (ms, log)",
        ylabel="val top-1 in the runtime (%)",
    )
    axis.set_title("candidates: accuracy vs latency (green: meets every budget)")
    axis.legend(loc="lower right", fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _candidate_table(rows: list[Row], config: ShipConfig) -> list[list[str]]:
    header = [
        "candidate",
        "source",
        "params",
        "MACs",
        "search: size / latency",
        "train img/s (epochs the budget buys)",
        "status",
        "epochs",
        "fp32 top-1",
        "int8 top-1 (runtime)",
        "int8 size",
        "latency (ms)",
        "verdict",
    ]
    table = [header]
    for row in rows:
        c = row.candidate
        measured = (
            f"{c.artifact_bytes / 1e6:.2f} MB / {c.latency_ms or 0:.2f} ms"
            if c.artifact_bytes
            else f"~{c.int8_estimate_bytes * FILE_OVERHEAD / 1e6:.2f} MB (estimate)"
        )
        line = [c.name, c.source, f"{c.params / 1e6:.2f}M", f"{c.macs / 1e6:.1f}M", measured, _speed(c), c.status]
        trained, exported = row.trained, row.exported
        if trained:
            top1 = trained.top1 if trained.top1 is not None else trained.best_top1  # the exported checkpoint's
            line += [f"{trained.epochs_run}/{trained.epochs_planned}", f"{top1:.2f}%" if top1 is not None else ""]
        else:
            line += ["", ""]
        if exported:
            best = exported.chosen
            failed = [name for name, ok in exported.verdicts.items() if not ok]
            line += [
                f"{best.top1:.2f}% ({best.precision})",
                f"{best.file_bytes / 1e6:.2f} MB",
                f"{best.latency_ms[str(config.threads)]['median']:.2f}",
                "meets budget" if not failed else "fails " + ", ".join(failed),
            ]
        else:
            line += ["", "", "", ""]
        table.append(line)
    return table


def _speed(candidate: Candidate) -> str:
    """The probed training speed (bf16: under bf16 autocast, as it trains) and the epochs it buys."""
    if candidate.train_images_per_s is None:
        return ""
    amp = " bf16" if candidate.train_amp == "bf16" else ""
    epochs = f" ({candidate.budget_epochs})" if candidate.budget_epochs is not None else ""
    estimated = "~" if candidate.speed_estimated else ""  # scaled from its MACs: the probes' time was spent
    return f"{estimated}{candidate.train_images_per_s:.0f}{amp}{epochs}"


def _markdown_table(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(markdown_text(cell.replace("|", "/")) for cell in row) + " |" for row in table[1:]]
    return "\n".join(lines)


CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)  # CommonMark: a run, then one as long


def markdown_text(line: str) -> str:
    """A markdown line with HTML escaped outside its `code` spans: markdown renderers pass raw HTML through, and a
    class or folder named ``<script>...`` is text (inside backticks it is literal already). Spans are found as
    CommonMark finds them (a backtick run closed by one of the same length; a lone backtick is text), so a name
    holding a backtick cannot turn the rest of the line into a span the renderer does not see."""
    parts, at = [], 0
    for span in CODE_SPAN.finditer(line):
        parts += [html.escape(line[at : span.start()], quote=False), span.group(0)]
        at = span.end()
    return "".join([*parts, html.escape(line[at:], quote=False)])


def code_span(text: str) -> str:
    """``text`` as one markdown code span, whatever backticks it holds (fenced by a longer run, CommonMark's rule)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {text} " if longest else text
    return f"{fence}{padded}{fence}"


def _html_table(table: list[list[str]]) -> str:

    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in table[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


NOTHING_FITS = "nothing fits the budget (see the search table)"


def _headline(config: ShipConfig, card: ModelCard | None, shipped: bool, why: str | None = None) -> list[str]:
    """The verdict lines; ``why``: the reason nothing shipped, where it is not a missed budget."""
    if card is None:
        return [
            f"**No candidate was trained and exported**: {why or 'nothing fits the budget (see the search table)'}."
        ]
    verdicts, artifact, accuracy, latency = card.budget.verdicts, card.artifact, card.accuracy, card.latency_ms
    mark = {True: "PASS", False: "FAIL"}
    short = card.budget.shortfall
    lines = [headline(short), ""] if short else []
    lines += [f"**Nothing shipped**: {why}.", ""] if why and not shipped else []
    lines += [
        ("**Shipped**" if shipped else "**No candidate met every budget; closest**")
        + f": `{card.model.candidate}` as `{artifact.file}` ({artifact.precision}"
        + (f" with {', '.join(artifact.float_layers)} in float" if artifact.float_layers else "")
        + f", {config.runtime}).",
        "",
        f"- size: {artifact.bytes / 1e6:.3f} MB (budget {config.max_size / 1e6:g} MB): {mark[verdicts['size']]}",
        f"- latency: {latency.median:.2f} ms median, p90 {latency.p90:.2f} ms, batch 1, "
        f"{config.threads} thread(s), measured in {config.runtime} on {card.versions.get('machine', 'this host')} "
        f"(budget {config.max_latency_ms:g} ms): {mark[verdicts['latency']]}",
        f"- accuracy: val top-1 {accuracy.top1_in_runtime:.2f}% through the runtime on "
        f"{accuracy.images} images (fp32 PyTorch {accuracy.top1_fp32_pytorch:.2f}%, drop "
        f"{accuracy.drop:.2f} points, gate {config.max_drop:g}): {mark[verdicts['accuracy_gate']]}",
        f"- time: {card.budget.time_used_s / 60:.1f} min of the {config.time_budget_s / 60:g} min budget",
    ]
    if card.core_ml is not None:
        package = card.core_ml
        lines.insert(-1, f"- iOS: `{package.file}` (Core ML, int8 weights, {package.bytes / 1e6:.3f} MB) beside it, "
                     "not run on this host (Core ML runs only on Apple platforms); PyTorch computing as it does: val "
                     f"top-1 {package.top1_pytorch_as_it_computes:.2f}%")  # fmt: skip
    if card.web is not None:
        lines.insert(-1, _web_line(card.web))
    sdk, sdk_top1 = accuracy.sdk, accuracy.top1_in_sdk
    if sdk and sdk_top1 is not None:
        agreement, clear = accuracy.sdk_agreement or 0.0, accuracy.sdk_clear_disagreements
        ties = " (those that differ are near ties)" if agreement < 100.0 and not clear else ""
        lines.insert(-1, f"- in the app's SDK: val top-1 {sdk_top1:.2f}% in {sdk}, the same file; the same top-1 as "
                     f"{config.runtime} on {agreement:.2f}% of images{ties}: {mark[not clear]}")  # fmt: skip
        lines[-1:-1] = _sdk_app_lines(card, config)
    elif sdk:
        lines.insert(-1, f"- in the app's SDK: {sdk}")
    if "min_top1" in verdicts:
        lines.append(
            f"- asked for (--min-top1): val top-1 at least {config.min_top1:g}% through the runtime: "
            + ("met" if verdicts["min_top1"] else "**not met**")
        )
    if "above_chance" in verdicts:
        lines.append(
            "- above chance: the val score is clearly above answering the largest class alone (one-sided "
            f"binomial test): {mark[verdicts['above_chance']]}"
        )
    return lines


def _sdk_app_lines(card: ModelCard, config: ShipConfig) -> list[str]:
    """The SDK's figure as an app gets it (the full-size photos, resized by the SDK within the snippet's region),
    and a warning where that resize costs more than the gate allows."""
    in_app = card.accuracy.top1_in_sdk_app
    if in_app is None:
        return []
    cost = card.accuracy.top1_in_runtime - in_app
    line = (f"- as an app runs it: val top-1 {in_app:.2f}% when the SDK resizes the full-size val images itself "
            "(the snippet below, its region of interest included)")  # fmt: skip
    if cost <= config.max_drop:
        return [line]
    return [line, f"  - **the SDK's own resize costs {cost:.2f} points** (over the {config.max_drop:g}-point gate): "
            "resize photos to the model's input as its preprocessing says before handing them to the SDK"]  # fmt: skip


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def write_ship_report(
    run_dir: Path,
    config: ShipConfig,
    state: ShipState,
    rows: list[Row],
    chosen: Row | None,
    closest: Row | None,
) -> ModelCard | None:
    """``model_card.json``, ``report.md`` (with PNGs beside it) and a self-contained ``report.html``."""
    focus = chosen or (closest if closest and closest.exported else None)
    artifact = run_dir / f"model{Path(chosen.exported.chosen.path).suffix}" if chosen and chosen.exported else None
    card = model_card(config, state, focus, artifact) if focus else None
    package = state.done(CORE_ML_PACKAGE) if artifact else None
    if card is not None and package is not None:
        card.core_ml = _core_ml_card(package)
    page = state.done(WEB_PAGE) if artifact else None
    if card is not None and page is not None:
        card.web = _web_card(page, run_dir)
    if card is not None and focus is not None:  # a model far below what this run showed reachable: say so
        accuracy = card.accuracy
        short = shortfall(state, focus.trained, accuracy.top1_in_runtime, config.time_budget_s,
                          accuracy.images, shipped=chosen is not None)  # fmt: skip
        card.budget.shortfall = short.to_dict() if short else None
    clean = _leak_free_score(config, state, focus)
    if card is not None and clean is not None:
        card.accuracy.top1_without_leaked, card.accuracy.leaked_val = clean
    if card is not None:
        write_atomic(run_dir / CARD_FILE, json.dumps(card.to_dict(), indent=2))
        write_atomic(run_dir / HUMAN_CARD, human_card(card))
    images = _images(run_dir, config, rows, focus)
    why = None if chosen else why_nothing_shipped(rows, closest)
    intro = _intro(run_dir, config, state, card, chosen is not None, why)
    tables = {"Candidates": _candidate_table(rows, config)}
    ladder = _ladder_table(state, rows)
    if ladder:
        tables["Transfer ladder"] = ladder
    health = _health_table(config, state, focus, clean)
    if health:
        tables["Data health"] = health
    per_class = _per_class_table(focus)
    if per_class:
        tables[f"Per class, int8 in {config.runtime}"] = per_class
    snippets = []
    if card is not None:
        snippets = [("Android (Kotlin)", "kotlin", android_snippet(card)), ("iOS (Swift)", "swift", ios_snippet(card))]
    if card is not None and card.core_ml is not None:
        artifact = dataclasses.replace(card.artifact, file=card.core_ml.file, format=CORE_ML)
        core_ml = dataclasses.replace(card, artifact=artifact)
        snippets.append(("iOS with Core ML (Swift, Vision)", "swift", ios_snippet(core_ml)))
    write_atomic(run_dir / "report.md", _markdown(intro, tables, images, snippets))
    write_atomic(run_dir / "report.html", _html(intro, tables, images, snippets))
    return card


HUMAN_CARD = "MODEL_CARD.md"  # beside model_card.json: the same card for people (a model hub's README.md)


def human_card(card: ModelCard) -> str:
    """``model_card.json`` for people, in the sections of the usual model cards (Mitchell et al. 2019; the Hugging
    Face card template): details, intended use, limitations, evaluation, how to use it."""
    accuracy, artifact, budget, latency, model = card.accuracy, card.artifact, card.budget, card.latency_ms, card.model
    classes = ", ".join(code_span(name) for name in card.classes)
    lines = [
        f"# {markdown_text(card.name)} (version {markdown_text(card.version)})",
        "",
        markdown_text(card.description) + ".",
        "",
        "## Model details",
        "",
        f"- file: `{artifact.file}` ({artifact.format}, {artifact.precision}, {artifact.bytes / 1e6:.3f} MB)",
        f"- architecture: `{model.candidate}`, {model.params / 1e6:.2f}M parameters, {model.macs / 1e6:.0f}M MACs, "
        f"{model.epochs} epochs" + (", distilled from a larger model" if model.distilled else ""),
        f"- licence: {markdown_text(card.license)}",
        f"- made by mobiforge {card.versions.get('mobiforge', '')} on {card.created}: `{card.command}`",
        f"- classes: {classes}",
        "",
        "## Intended use",
        "",
        markdown_text(card.intended_use),
        "",
        "## Limitations",
        "",
        *[f"- {markdown_text(limit)}" for limit in card.limitations],
        "",
        "## Evaluation",
        "",
        f"- data: {markdown_text(accuracy.data)}, {accuracy.split} split, {accuracy.images} images, "
        "none of them seen in training",
        f"- top-1 through {artifact.format} itself: {accuracy.top1_in_runtime:.2f}% (the fp32 PyTorch model: "
        f"{accuracy.top1_fp32_pytorch:.2f}%); `mobiforge eval {artifact.file}` repeats it",
    ]
    if accuracy.top1_in_sdk is not None:
        lines.append(f"- in {accuracy.sdk}: {accuracy.top1_in_sdk:.2f}% on the same pixels")
    if accuracy.top1_in_sdk_app is not None:
        lines.append(f"- as an app runs it (the SDK resizing the full-size photos): {accuracy.top1_in_sdk_app:.2f}%")
    lines += [
        f"- latency: {latency.median:.2f} ms median, batch 1, {latency.threads} thread(s), on this host's CPU",
        f"- budget: {'met' if budget.met else 'not met'} "
        f"({', '.join(f'{name} {mark}' for name, mark in _verdict_words(budget.verdicts))})",
        "",
        "## How to use it",
        "",
        f"Load `{artifact.file}` with `labels.txt` beside it; `report.html` has Android and iOS code with this "
        f"model's preprocessing. Try it on your own photos first: `mobiforge serve .` in this folder.",
        "",
    ]
    return "\n".join(lines)


def _verdict_words(verdicts: dict[str, bool]) -> list[tuple[str, str]]:
    return [(name.replace("_", " "), "passed" if ok else "failed") for name, ok in verdicts.items()]


Snippet = tuple[str, str, str]  # title, language, code


def _images(run_dir: Path, config: ShipConfig, rows: list[Row], focus: Row | None) -> dict[str, Path]:
    """The report's figures, written or copied into ``run_dir``, by title."""
    images: dict[str, Path] = {}
    if any(row.exported for row in rows):
        images["accuracy vs latency"] = plot_candidates(rows, config, run_dir / "candidates.png")
    shipped = focus.exported.chosen if focus and focus.exported else None
    if shipped is not None and shipped.confusion:
        title = f"val, int8 in {config.runtime}"
        images[f"confusion matrix ({title})"] = plot_confusion(
            shipped.confusion, shipped.classes, run_dir / "confusion_int8.png", title=title
        )
    if focus and focus.trained:
        source = Path(focus.trained.run_dir)
        for title, name in (("training curves", "curves.png"), ("confusion matrix (val, fp32)", "confusion.png")):
            if (source / name).exists():
                images[title] = Path(shutil.copyfile(source / name, run_dir / name))
    if (run_dir / WEB_SCREENSHOT).is_file():
        images["the web page, its camera shown a val photo (headless Chromium)"] = run_dir / WEB_SCREENSHOT
    if shipped is not None and shipped.confident_mistakes:
        mistakes = plot_mistakes(shipped.confident_mistakes, run_dir / "mistakes.png", data_root(config.data))
        if mistakes is not None:
            images["val images the shipped file gets wrong most confidently"] = mistakes
    return images


def _per_class_table(focus: Row | None) -> list[list[str]]:
    """Precision, recall and F1 of each class, computed on the shipped file's own logits in its runtime."""
    shipped = focus.exported.chosen if focus and focus.exported else None
    if shipped is None or not shipped.per_class:
        return []
    table = [["class", "precision", "recall", "F1", "val images"]]
    for name, figures in shipped.per_class.items():
        table.append([
            name, f"{figures['precision']:.3f}", f"{figures['recall']:.3f}", f"{figures['f1-score']:.3f}",
            f"{figures['support']:.0f}",
        ])  # fmt: skip
    return table


def _intro(
    run_dir: Path, config: ShipConfig, state: ShipState, card: ModelCard | None, shipped: bool, why: str | None
) -> list[str]:
    """The title, the verdict lines, the data and teacher, and the command, as markdown lines."""
    survey, data = state.survey, without_local_paths(state.survey.description, config.data)
    teacher = state.done(TEACHER)
    teacher_line = state.done(SEARCH).teacher_note
    if config.teacher not in ("auto", "none"):
        teacher_line = without_local_paths(teacher_line, config.teacher)
    if teacher and teacher.trained and teacher.trained.top1 is not None:
        best = max(teacher.rungs, key=lambda rung: rung.top1).name if teacher.rungs else None
        source = f"its best rung, {best}: see the transfer ladder" if best else Path(teacher.trained.checkpoint).name
        teacher_line += f"; val top-1 {teacher.trained.top1:.2f}% ({source})"
    elif teacher and teacher.skipped:
        teacher_line += f"; {teacher.skipped}"
    return [
        f"# mobiforge ship: {run_dir.name}",
        "",
        *_headline(config, card, shipped, why),
        "",
        f"Data: {data}: {survey.train_images} train / {survey.val_images} val images, "
        f"{len(survey.classes)} classes, median image side {survey.median_side} px.",
        f"{_sentence(teacher_line or 'no teacher')}.",
        "",
        f"Command: `{ship_command(config)}`",
    ]


Tables = dict[str, list[list[str]]]  # title -> rows, the first the header


def _leak_free_score(config: ShipConfig, state: ShipState, focus: Row | None) -> tuple[float, int] | None:
    """The gate's top-1 without its val photos that have a copy in train, and how many those are (None: none)."""
    exported = focus.exported.chosen if focus and focus.exported else None
    if exported is None or not state.health.leaked_val:
        return None
    left_out = left_out_of_gate(config, state)
    if left_out:  # --dedupe-val: the gate judged without them
        return exported.top1, len(left_out)
    return without_leaks(state.health, exported.wrong_images, exported.images, gate_images(config, state))


def _health_table(
    config: ShipConfig, state: ShipState, focus: Row | None, clean: tuple[float, int] | None
) -> list[list[str]]:
    """The doctor's verdicts, and the gate's score without the val photos that have a copy in train."""
    health = state.health
    rows = [[line] for line in health.verdicts] + ([[health.note]] if health.note else [])
    if clean is not None and left_out_of_gate(config, state):
        rows.append([f"--dedupe-val: the gate judged on the val photos without the {clean[1]} that have a copy in "
                     f"train: top-1 {clean[0]:.2f}%"])  # fmt: skip
    elif clean is not None and focus is not None and focus.exported is not None:
        rows.append(
            [f"the gate's top-1 without the {clean[1]} val photos that have a copy in train: {clean[0]:.2f}% "
             f"(with them: {focus.exported.chosen.top1:.2f}%; --dedupe-val gates on the rest)"]
        )  # fmt: skip
    elif config.dedupe_val and health.leaked_val:
        rows.append(["--dedupe-val: every val photo has a copy in train, so the gate judged on all of them"])
    if health.leaked_val:
        shown = ", ".join(health.leaked_val[:SHOWN_LEAKS])
        more = f" and {len(health.leaked_val) - SHOWN_LEAKS} more" if len(health.leaked_val) > SHOWN_LEAKS else ""
        rows.append([f"val photos with a copy in train: {shown}{more} (all: {HEALTH_FILE})"])
    return [["finding"], *rows] if rows else []


def _ladder_table(state: ShipState, rows: list[Row]) -> list[list[str]]:
    """Every rung climbed: the teacher's, then each student trained on the cache (its rung, distilled)."""
    teacher = state.done(TEACHER)
    table = [
        [
            f"teacher: {rung.name}",
            f"{rung.trainable_params / 1e6:.3f}M",
            _data_used(rung, state.survey.train_images),
            f"{rung.seconds:.0f} s",
            f"{rung.top1:.2f}%",
        ]
        for rung in (teacher.rungs if teacher else [])
    ]
    for row in rows:
        trained = row.trained
        if trained and trained.rung:
            top1 = f"{trained.top1:.2f}%" if trained.top1 is not None else "-"
            params = f"{trained.trainable_params / 1e6:.3f}M" if trained.trainable_params else "-"
            name = f"{row.candidate.name}: {trained.rung}, distilled"
            used = Rung(name, 0, 0.0, 0.0, trained.images, trained.views, "the teacher's cache")
            data = _data_used(used, state.survey.train_images) if trained.images else "the teacher's cache"
            table.append([name, params, data, f"{trained.seconds or 0:.0f} s", top1])
    if teacher and teacher.learning_curve:
        photos = " / ".join(f"{int(images):,}" for images, _ in teacher.learning_curve)
        scores = " / ".join(f"{top1:.2f}%" for _, top1 in teacher.learning_curve)
        pays = "more photos pay" if more_images_pay(teacher.learning_curve) else "more epochs pay, not more photos"
        table.append([f"teacher: the probe's learning curve ({pays})", "-", f"{photos} photos", "-", scores])
    header = ["rung", "trainable params", "trained on (cache computed by)", "time", "val top-1"]
    return [header, *table] if table else []


def _data_used(rung: Rung, folder_images: int) -> str:
    """What a rung trained on: ``2,367 photos x 4 cached views (onnxruntime int8)``, or a fresh view every epoch;
    a subset with its share of the folder's ``folder_images`` training photos."""
    if rung.images is None:
        return "-"  # a state from before the record
    photos = f"{rung.images:,} photos"
    if rung.images < folder_images:
        photos = f"{rung.images:,} of {folder_images:,} photos ({rung.images / folder_images:.0%}, stratified)"
    if rung.views is None:
        return f"{photos}, a new augmented view every epoch"
    engine = f" ({rung.trunk_pass})" if rung.trunk_pass else ""
    disk = (
        f"; the disk held {rung.views} of the {rung.views_asked} asked" if (rung.views_asked or 0) > rung.views else ""
    )
    return f"{photos} x {rung.views} cached view{'s' if rung.views != 1 else ''}{engine}{disk}"


def _markdown(intro: list[str], tables: Tables, images: dict[str, Path], snippets: list[Snippet]) -> str:
    md = [markdown_text(line) for line in intro]
    for title, table in tables.items():
        md += ["", f"## {title}", "", _markdown_table(table)]
    md.append("")
    md += [f"## {title.capitalize()}\n\n![{title}]({path.name})\n" for title, path in images.items()]
    if snippets:
        md += ["## Use it in your app", ""]
        md += [f"### {title}\n\n```{lang}\n{code}```\n" for title, lang, code in snippets]
    return "\n".join(md) + "\n"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 6px;text-align:left}"
    "th{background:#f3f3f3}pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:12px}img{max-width:100%}"
)


def _inline(text: str) -> str:
    """The markdown intro's `code` and **bold** as HTML."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html(intro: list[str], tables: Tables, images: dict[str, Path], snippets: list[Snippet]) -> str:
    """A page that opens anywhere alone: the figures inlined as base64 PNGs."""
    title = html.escape(intro[0][2:])
    body = [f"<h1>{title}</h1>"]
    items = [line[2:] for line in intro[1:] if line.startswith("- ")]
    paragraphs = [line for line in intro[1:] if line and not line.startswith("- ")]
    body.append(f"<p>{_inline(paragraphs[0])}</p>" if paragraphs else "")
    body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
    body += [f"<p>{_inline(line)}</p>" for line in paragraphs[1:]]
    for caption, table in tables.items():
        body += [f"<h2>{html.escape(caption)}</h2>", _html_table(table)]
    for caption, path in images.items():
        encoded = base64.b64encode(path.read_bytes()).decode()
        body.append(
            f"<h2>{html.escape(caption.capitalize())}</h2>"
            f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
        )
    if snippets:
        body.append("<h2>Use it in your app</h2>")
        body += [f"<h3>{name}</h3><pre><code>{html.escape(code)}</code></pre>" for name, _, code in snippets]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
