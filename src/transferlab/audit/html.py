"""``audit.html``: the findings as thumbnails grouped by kind, worst first; one self-contained file.

Images are embedded as small JPEG data URIs (no network, no side files), so the page opens offline
and can be mailed around.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

from transferlab.data import ImageSource, atomic_write_text

KIND_TITLES = {
    "label": "Label issues (confident learning on out-of-fold probabilities)",
    "duplicate": "Exact duplicates (same decoded pixels)",
    "near_duplicate": "Near-duplicates (embedding cosine or perceptual hash within the calibrated thresholds)",
    "leakage": "Leakage: copies across train / val / test",
    "outlier": "Outliers in embedding space",
    "quality": "Image quality",
}


def thumbnail_uri(source: ImageSource, identity: str, *, size: int = 128) -> str:
    """A JPEG data URI of the image, at most ``size`` px on its longer side."""
    im = source.load(source.index_of(identity), draft_size=size)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _caption(f: dict[str, Any]) -> str:
    k = f["kind"]
    if k == "label":
        probs = ", ".join(f"{c} {p:.2f}" for c, p in f["probabilities"].items())
        return f"given <b>{html.escape(f['given'])}</b> &rarr; suggested <b>{html.escape(f['suggested'])}</b><br>{html.escape(probs)}"
    if k in ("duplicate", "near_duplicate", "leakage"):
        ph = f.get("phash_distance")
        return (f"{html.escape(f['split'])} &harr; {html.escape(f['other_split'])}, cosine {f['score']:.3f}"
                + ("" if ph is None else f", phash distance {ph}") + (f", {f['match']} match" if k == "leakage" else ""))
    if k == "outlier":
        return f"class {html.escape(f['class'])}, centroid distance {f['centroid_distance']:.3f}"
    return f"{html.escape(f['issue'])}: {html.escape(f['measured'])}"


def _phash_note(thr: dict[str, Any]) -> str:
    ph = thr.get("phash")
    return "" if ph is None else f"; or perceptual-hash distance &le; {ph['value']} with cosine &ge; {ph['floor']:.3f}"


def _card(f: dict[str, Any], source: ImageSource) -> str:
    imgs = [f["path"]] + ([f["other"]] if "other" in f else [])
    thumbs = "".join(f'<img src="{thumbnail_uri(source, p)}" alt="{html.escape(os.path.basename(p))}" '
                     f'title="{html.escape(p)}">' for p in imgs)
    names = " / ".join(html.escape(os.path.basename(p)) for p in imgs)
    return (f'<figure class="card" data-kind="{f["kind"]}" data-score="{f["score"]}">{thumbs}'
            f'<figcaption><span class="score">{f["score"]:.3f}</span> {names}<br>{_caption(f)}</figcaption></figure>')


def write_html(res: dict[str, Any], source: ImageSource, path: Path, *, per_kind: int = 60) -> Path:
    """Write the page; each kind shows its ``per_kind`` worst findings (all of them are in audit.json)."""
    sections = []
    for kind, title in KIND_TITLES.items():
        items = [f for f in res["findings"] if f["kind"] == kind]
        more = f'<p class="more">and {len(items) - per_kind} more in audit.json</p>' if len(items) > per_kind else ""
        body = "".join(_card(f, source) for f in items[:per_kind]) or '<p class="none">none found</p>'
        sections.append(f'<section id="{kind}"><h2>{html.escape(title)} <small>({len(items)})</small></h2>'
                        f'<div class="grid">{body}</div>{more}</section>')
    thr = res["near_duplicate_threshold"]
    bal = res["balance"]
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{n}</td>"
                   + "".join(f"<td>{bal['per_split'][s][c]}</td>" for s in ("train", "val", "test")) + "</tr>"
                   for c, n in bal["per_class"].items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>audit of {html.escape(str(res['data']))}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} h2 small{{color:#777;font-weight:normal}}
.grid{{display:flex;flex-wrap:wrap;gap:10px}} .card{{margin:0;border:1px solid #ddd;border-radius:6px;padding:6px;
width:270px;font-size:12px}} .card img{{max-width:128px;max-height:128px;margin-right:4px;vertical-align:top}}
.score{{background:#c62828;color:#fff;border-radius:3px;padding:0 4px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:2px 8px;text-align:right}} td:first-child{{text-align:left}}
</style></head><body>
<h1>audit of {html.escape(str(res['data']))}</h1>
<p>{res['n_images']} images, {len(res['classes'])} classes; embeddings: {html.escape(res['backbone'])};
near-duplicate threshold {thr['value']:.4f} ({html.escape(thr['rule'])}){_phash_note(thr)};
out-of-fold accuracy {res['labels']['out_of_fold_accuracy']:.3f} ({res['labels']['folds']}-fold).</p>
<p>{' &middot; '.join(f'<a href="#{k}">{k}: {n}</a>' for k, n in res['counts'].items())}</p>
{''.join(sections)}
<section id="balance"><h2>Class balance <small>(max/min {bal['imbalance_ratio']})</small></h2>
<table><tr><th>class</th><th>all</th><th>train</th><th>val</th><th>test</th></tr>{rows}</table></section>
</body></html>
"""
    return atomic_write_text(path, page)
