"""The page shell shared by the run report and the comparison: inline styles, escaping, small tables."""

from __future__ import annotations

from html import escape

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; margin: 0;
       background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 24px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 32px 0 10px; }
.sub { color: #5b6270; margin: 0 0 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { background: #fff; border: 1px solid #e2e5ea; border-radius: 8px; padding: 10px 16px; min-width: 150px; }
.card b { display: block; font-size: 20px; } .card span { color: #5b6270; font-size: 12px; }
.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 18px; align-items: start; }
.pair .grid { grid-template-columns: 1fr; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 14px; }
figure { background: #fff; border: 1px solid #e2e5ea; border-radius: 8px; margin: 0; padding: 6px; }
figure svg { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; background: #fff; font-size: 13px; }
th, td { border: 1px solid #e2e5ea; padding: 5px 9px; text-align: left; vertical-align: top; }
th { background: #eef1f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #fff; border: 1px solid #e2e5ea; border-radius: 8px; padding: 12px; overflow-x: auto;
      font-size: 12px; }
td pre { border: 0; padding: 0; margin: 0; background: none; white-space: pre-wrap; }
.completions table { width: 100%; table-layout: fixed; }
.completions th:nth-child(1) { width: 80px; } .completions th:nth-child(2) { width: 24%; }
details { margin: 8px 0; } summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
.tag { display: inline-block; border-radius: 4px; padding: 0 6px; font-size: 12px; font-weight: 600; }
.fixed { background: #dff3e4; color: #1e6b35; } .broken { background: #fbe0e3; color: #a1263a; }
.same { background: #eceff3; color: #5b6270; }
.alarm { background: #fff4e5; border: 1px solid #f0b45b; border-radius: 8px; padding: 10px 14px; margin: 12px 0; }
.note { color: #5b6270; font-size: 13px; }
"""


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body><main>\n{body}\n</main></body></html>\n"
    )


def table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """An HTML table; cells are HTML already (escape text before); columns from ``numeric_from`` align right."""
    head = "".join(f"<th>{h}</th>" for h in header)

    def cells(row: list[str]) -> str:
        return "".join(f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(row))

    body = "".join(f"<tr>{cells(row)}</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figures(svgs: list[str]) -> str:
    return '<div class="grid">' + "".join(f"<figure>{s}</figure>" for s in svgs) + "</div>"


def number(value, digits: int = 3) -> str:
    """
    >>> number(0.12345), number(None), number(12)
    ('0.123', '–', '12')
    """
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"
