"""The HTML report: run the report notebook on the tables, export it without code, offline.

`render` is what `batchscale report` calls. The HTML pieces the notebook displays (claims
table, verdict badges, setup tables, notes) are in report_html.py.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from pathlib import Path

from batchscale.io import atomic_path
from batchscale.provenance import report_software_versions
from batchscale.report_html import TITLE

KERNEL = "python3"

# The lab template links require.js, MathJax and mermaid from a CDN. The report needs none of
# them (no widgets, no LaTeX, no diagrams), and must open offline, so those blocks are emptied.
# Figures are PNG outputs embedded as data URIs; the block is overridden only to carry each
# figure's alt text (from the output's metadata), which the lab template has no slot for.
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block data_png scoped %}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
 alt="{{ ((output | get_metadata('alt', 'image/png')) or 'figure') | escape_html }}" class="bs-figure">
</div>
{% endblock data_png %}
"""

# Anything a browser would fetch by itself: src= anywhere, href= on <link>, CSS url()/@import
# and script imports. Plain <a href> links are only followed when clicked, so they may stay.
_FETCHED = re.compile(
    r"""(?:\bsrc\s*=\s*["']?\s*(?:https?:)?//)"""
    r"""|(?:<link\b[^>]*\bhref\s*=\s*["']?\s*(?:https?:)?//)"""
    r"""|(?:url\(\s*["']?\s*(?:https?:)?//)"""
    r"""|(?:@import\s+["']?\s*(?:https?:)?//)"""
    r"""|(?:\bimport\(\s*["'](?:https?:)?//)""",
    re.IGNORECASE,
)


class ReportError(RuntimeError):
    """The report could not be made as promised (e.g. it would fetch something online)."""


# ---------------------------------------------------------------------------------------
# Rendering: papermill, then nbconvert.
# ---------------------------------------------------------------------------------------


def render(
    notebook: Path,
    tables: Path,
    claims: Path,
    params: dict,
    executed: Path,
    out: Path,
    data_info: Path | None = None,
    studies: list[Path] = (),
) -> None:
    """Execute `notebook` on the tables, keep it at `executed`, export code-free HTML to `out`.

    `data_info` is the prepared data set's description (.json); by default the one beside
    the prepared .npz under the working directory (`config.prepared_path`: data/prepared/
    user_<stem>.json for a user's file), as the workflow lays it out. A missing one only
    leaves the data sizes out of the report.
    """
    if data_info is None:
        from batchscale.config import prepared_path

        data_info = Path(prepared_path(params)).with_suffix(".json")
    parameters = notebook_parameters(Path(tables), Path(claims), params, Path(data_info), studies)
    nb = execute(Path(notebook), parameters)
    _write_notebook_atomic(nb, Path(executed))
    page = to_html(nb)
    fetched = external_references(page)
    if fetched:
        raise ReportError(f"the report would fetch {len(fetched)} resource(s) online: {fetched[:3]}")
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")


def notebook_parameters(
    tables: Path, claims: Path, params: dict, data_info: Path, studies: list[Path] = ()
) -> dict:
    """What papermill injects: params, setup, and absolute paths (the kernel's cwd does not matter)."""
    info = read_data_info(data_info)
    return {
        "tables": str(tables.resolve()),
        "claims": str(claims.resolve()),
        "studies": [str(Path(path).resolve()) for path in studies],
        "params": params,
        "setup": {
            "versions": report_software_versions(),
            "machine": machine_info(),
            "data_info": info,
            "model_parameters": count_model_parameters(params["model"], info),
        },
    }


def machine_info() -> dict:
    """The machine that renders the report (timings name their own device in timing.csv)."""
    import torch

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": cuda,
    }


def read_data_info(path: Path) -> dict | None:
    """The prepared data set's description, or None when it is not there (e.g. in tests)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def count_model_parameters(model_params: dict, data_info: dict | None) -> int | None:
    """Trainable parameters of the model, when the data's shapes are known."""
    if not data_info:
        return None
    from batchscale.models import build_model

    in_features = int(math.prod(data_info["x_train_shape"][1:]))
    model = build_model(model_params, in_features, int(data_info["num_classes"]))
    return sum(p.numel() for p in model.parameters())


def execute(notebook: Path, parameters: dict):
    """Run the notebook with papermill; returns the executed notebook (nothing written)."""
    import papermill

    # output_path=None: papermill writes nothing, so no half-executed notebook is left behind.
    return papermill.execute_notebook(
        str(notebook), None, parameters=parameters, kernel_name=KERNEL, progress_bar=False, log_output=False
    )


def _write_notebook_atomic(nb, path: Path) -> None:
    import nbformat

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            nbformat.write(nb, handle)


def to_html(nb) -> str:
    """Code-free, prompt-free, self-contained HTML (images are already data URIs)."""
    import jinja2
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})],
        template_file="offline.html.j2",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        exclude_anchor_links=True,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": TITLE}})
    return body


def external_references(page: str) -> list[str]:
    """Every place where the page would fetch something from the network by itself."""
    return [m.group(0) for m in _FETCHED.finditer(page)]
