"""Result display for `%%ironcage sql` / `%ironcage audit`, and the `-o NAME` hand-over to the child.

The hand-over never pickles anything on the trusted side: the result becomes a JSON string literal
inside a few lines of Python that the kernel runs in the (untrusted) child, which builds the DataFrame.
"""

from __future__ import annotations

import html
import json
import keyword
from typing import Any

from .query import QueryResult, to_jsonable

_MAX_CELL_CHARS = 200


def _cell_text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict | list | tuple):
        text = json.dumps(to_jsonable(value), ensure_ascii=False)
    else:
        text = str(to_jsonable(value))
    return text if len(text) <= _MAX_CELL_CHARS else text[: _MAX_CELL_CHARS - 1] + "…"


def _footer(result: QueryResult, limit: int | None) -> str:
    shown = len(result.rows)
    parts = [f"{shown} row{'s' if shown != 1 else ''}"]
    if result.truncated:
        parts.append(f"truncated to the display limit of {limit} (use --limit N)")
    parts.append(f"{result.sessions} session file{'s' if result.sessions != 1 else ''}")
    return "; ".join(parts)


def render_html(result: QueryResult, limit: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in result.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell_text(v))}</td>" for v in row) + "</tr>"
        for row in result.rows
    )
    notes = "".join(f"<div class='ironcage-audit-note'>{html.escape(n)}</div>" for n in result.notes)
    return (
        "<div class='ironcage-audit-result'>"
        f"<table class='dataframe'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<div class='ironcage-audit-footer'>{html.escape(_footer(result, limit))}</div>{notes}</div>"
    )


def render_text(result: QueryResult, limit: int | None = None) -> str:
    cells = [[_cell_text(v).replace("\n", "\\n") for v in row] for row in result.rows]
    widths = [len(c) for c in result.columns]
    for row in cells:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=False)]
    line = lambda values: " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=False)).rstrip()  # noqa: E731
    out = [line(result.columns), "-+-".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    out.append(f"({_footer(result, limit)})")
    out.extend(result.notes)
    return "\n".join(out)


def mimebundle(result: QueryResult, limit: int | None = None) -> dict[str, str]:
    """`display_data` content for the front end: HTML table plus a plain-text fallback."""
    return {"text/html": render_html(result, limit), "text/plain": render_text(result, limit)}


def check_variable_name(name: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("__"):
        raise ValueError(f"-o needs a plain Python variable name, not {name!r}")
    return name


def dataframe_code(name: str, result: QueryResult) -> str:
    """Python source that, run in the child, binds `name` to a pandas DataFrame of `result`.

    The data travels as a JSON string literal (repr of a str is always a valid, inert literal);
    timestamp columns are parsed back to datetimes on the child's side.
    """
    check_variable_name(name)
    timestamp_columns = [i for i, t in enumerate(result.types) if t.upper().startswith("TIMESTAMP")]
    payload = json.dumps(
        {
            "columns": result.columns,
            "data": [[to_jsonable(v) for v in row] for row in result.rows],
            "timestamps": timestamp_columns,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return (
        "def __ironcage_frame(payload):\n"
        "    import json, pandas\n"
        "    data = json.loads(payload)\n"
        "    frame = pandas.DataFrame(data['data'], columns=data['columns'])\n"
        "    for index in data['timestamps']:\n"
        "        frame[frame.columns[index]] = pandas.to_datetime(frame.iloc[:, index], format='ISO8601')\n"
        "    return frame\n"
        f"{name} = __ironcage_frame({payload!r})\n"
        "del __ironcage_frame\n"
    )
