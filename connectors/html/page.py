"""The page shell shared by the report pages: one self-contained HTML file
(plotly.js, styles, scripts and data inlined; no request leaves the page).

Data travel as one JSON document in a `<script type="application/json">`;
long numeric columns inside it are base64 typed arrays (`typed`), decoded
once in the browser (`assets/common.js` `cuts.col`): about 4 bytes a price
(float32) or a time (uint32 epoch seconds, good until 2106) instead of 10-30
as JSON text.
"""
from __future__ import annotations

import base64
import functools
import html
import json
import math
from importlib import resources
from typing import Any

import numpy as np

_DTYPES = {"f4": "<f4", "f8": "<f8", "u4": "<u4", "i4": "<i4"}


def typed(values, dtype: str) -> dict:
    """A numeric column as {"dtype", "b64"}; NaN stays NaN in float columns."""
    arr = np.ascontiguousarray(np.asarray(values, dtype=_DTYPES[dtype]))
    return {"dtype": dtype, "b64": base64.b64encode(arr.tobytes()).decode("ascii")}


def plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_script(element_id: str, data: Any) -> str:
    """A JSON data block; `<` escaped so no text in the data can close it."""
    text = json.dumps(plain(data), separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


@functools.lru_cache(maxsize=None)
def asset(name: str) -> str:
    return resources.files("connectors.html").joinpath("assets", name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly.js as shipped inside the plotly wheel (no CDN, no npm)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def document(title: str, body: str, data: Any, script: str, *, body_class: str = "") -> str:
    """The whole page: head with styles and plotly.js, `body`, the data block,
    the shared script and the page's `script` asset."""
    cls = f' class="{html.escape(body_class)}"' if body_class else ""
    return "".join([
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{html.escape(title)}</title><style>{asset('report.css')}</style>",
        f"<script>{plotly_js()}</script></head>\n<body{cls}>\n", body, "\n",
        json_script("report-data", data), "\n",
        f"<script>{asset('common.js')}</script>\n<script>{asset(script)}</script>\n</body></html>\n",
    ])
