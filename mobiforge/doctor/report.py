"""``doctor.html``: one section per kind of finding, with thumbnails (copies side by side; suspected wrong labels
with the given label, the suggested one and the probe's confidence). Every name from the folder is escaped; the
page is one file, its thumbnails inline, and names files relative to the data folder only."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import ImageOps

from mobiforge.data.images import load_rgb
from mobiforge.doctor.diagnosis import Diagnosis, Leak
from mobiforge.doctor.features import FeatureFindings
from mobiforge.files import write_atomic

THUMB_SIDE = 112
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222 }
h1 { font-size: 1.5em } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc }
.row { display: flex; flex-wrap: wrap; gap: 12px }
figure { margin: 0; width: 240px; font-size: 0.8em; overflow-wrap: anywhere }
figure.pair { width: 250px } figure img { display: block; max-width: 112px; max-height: 112px }
.pair .imgs { display: flex; gap: 4px }
table { border-collapse: collapse } td, th { padding: 2px 10px; text-align: right } td:first-child { text-align: left }
.verdict li { margin: 0.3em 0 }
"""


def thumbnail(path: str) -> str:
    """An inline JPEG of the image, at most THUMB_SIDE px a side ("" when it does not decode)."""
    try:
        image = ImageOps.contain(load_rgb(path, draft_size=THUMB_SIDE), (THUMB_SIDE, THUMB_SIDE))
    except Exception:  # an undecodable file is listed by name
        return ""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_report(diagnosis: Diagnosis, path: Path, shown: int) -> None:
    write_atomic(path, render(diagnosis, shown))


def render(diagnosis: Diagnosis, shown: int) -> str:
    esc = html.escape
    counts = diagnosis.class_counts()
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{count['train']}</td><td>{count['val']}</td></tr>"
        for name, count in counts.items()
    )
    parts = [
        f"<h1>Data health: {esc(diagnosis.data)}</h1>",
        f"<p>{len(diagnosis.facts)} files, {len(counts)} classes.</p>",
        "<ul class='verdict'>" + "".join(f"<li>{esc(line)}</li>" for line in diagnosis.verdicts()) + "</ul>",
        f"<h2>Classes</h2><table><tr><th>class</th><th>train</th><th>val</th></tr>{rows}</table>",
        *_sections(diagnosis, shown),
    ]
    body = "\n".join(part for part in parts if part)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mobiforge doctor</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _sections(diagnosis: Diagnosis, shown: int) -> list[str]:
    esc, cheap, found = html.escape, diagnosis.cheap, diagnosis.features
    describe = diagnosis.entry

    def single(index: int, note: str = "") -> str:
        entry = describe(index)
        caption = f"{esc(entry['path'])}<br>{esc(entry['split'])} · {esc(entry['label'])}{note}"
        return _figure([diagnosis.facts[index].path], caption)

    sections = [
        _section(
            "Val photos with a copy in train",
            diagnosis.leaks,
            lambda leak: _figure(
                [diagnosis.facts[leak.val].path, diagnosis.facts[leak.train].path],
                f"val {esc(diagnosis.relative(leak.val))}<br>train {esc(diagnosis.relative(leak.train))}<br>"
                + _leak_kind(leak),
            ),
            shown,
            "Each counts in the val score though the model has seen it: the score reads high.",
        ),
    ]
    if found is not None:
        sections.append(
            _section(
                "Suspected wrong labels",
                found.label_issues,
                lambda issue: single(
                    issue[0],
                    f"<br>suggested <b>{esc(diagnosis.classes[issue[1]])}</b> ({100 * issue[2]:.0f}%)",
                ),
                shown,
                f"The given label, and the class suggested by the {esc(found.probe)}, trained on the other folds "
                f"({esc(_probe_note(found))}).",
            )
        )
    sections.append(
        _section(
            "Exact copies (same pixels)",
            cheap.duplicate_groups,
            lambda group: _figure(
                [diagnosis.facts[i].path for i in group[:3]],
                "<br>".join(f"{esc(describe(i)['path'])} ({esc(describe(i)['label'])})" for i in group),
            ),
            shown,
        )
    )
    if found is not None:
        leaked = {leak.val for leak in diagnosis.leaks}
        within = [group for group in found.near_duplicate_sets if not leaked.intersection(group)]
        sections += [
            _section(
                "Near copies",
                within,
                lambda group: _figure(
                    [diagnosis.facts[i].path for i in group[:3]],
                    "<br>".join(f"{esc(describe(i)['path'])} ({esc(describe(i)['split'])})" for i in group),
                ),
                shown,
                "Re-encodes, crops, bursts: each counts more than once.",
            ),
            _section("Outliers", found.outliers, lambda pair: single(pair[0]), shown, "Far from every other photo."),
        ]
        bursts = diagnosis.bursts()
        if bursts:
            sections.append(
                "<h2>Files that follow each other look alike</h2><p>"
                + esc(", ".join(bursts))
                + ": burst shots or video frames? A random split puts near-copies on both sides.</p>"
            )
    for title, items in (
        (f"Tiny images (under {cheap.tiny_side} px)", cheap.tiny),
        ("Extreme aspect ratios", cheap.extreme_aspect),
        ("Grayscale among colour", cheap.gray_among_colour),
        ("CMYK", cheap.cmyk),
        ("Rotated by their EXIF tag (mobiforge turns them upright; some tools do not)", cheap.exif_rotated),
        ("Extensions that do not match the format", cheap.lying_extension),
    ):
        sections.append(_section(title, items, lambda index: single(index), shown))
    unreadable = [
        f"<li>{esc(diagnosis.relative(i))}: {esc(diagnosis.facts[i].problem or '')}</li>" for i in cheap.unreadable
    ]
    if unreadable:
        sections.append(f"<h2>Files that do not decode ({len(unreadable)})</h2><ul>{''.join(unreadable)}</ul>")
    return sections


def _section(title: str, items: Sequence[object], show: Callable[[object], str], shown: int, note: str = "") -> str:
    if not items:
        return ""
    more = f" ({shown} shown; doctor.json lists all)" if len(items) > shown else ""
    figures = "".join(show(item) for item in items[:shown])
    explained = f"<p>{html.escape(note)}</p>" if note else ""
    return f"<h2>{html.escape(title)}: {len(items)}{more}</h2>{explained}<div class='row'>{figures}</div>"


def _figure(paths: list[str], caption: str) -> str:
    images = "".join(f"<img src='{source}' alt=''>" for source in map(thumbnail, paths) if source)
    kind = "pair" if len(paths) > 1 else ""
    return f"<figure class='{kind}'><div class='imgs'>{images}</div><figcaption>{caption}</figcaption></figure>"


def _leak_kind(leak: Leak) -> str:
    said = leak.kind
    if leak.kind == "near":
        said += f", feature distance {leak.distance:.3f}"
    if leak.similarity is not None:
        said += f", pixels correlate {leak.similarity:.3f}"
    if leak.also:
        said += f", {len(leak.also)} more train copies"
    return said


def _probe_note(found: FeatureFindings) -> str:
    """Which probe judged, and how each held out: ``linear probe 88.9% out of fold; fine-tuned ... 92.0%``."""
    return "; ".join(f"{name}: {top1:.1f}% out of fold" for name, top1 in found.probe_accuracies.items())
