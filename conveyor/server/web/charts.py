"""Small SVG charts drawn on the server: a page needs no chart library, and reads without JavaScript."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from html import escape

WIDTH, HEIGHT, PAD = 600, 120, 18


def bar_chart(days: Sequence[tuple[date, int, int]], *, title: str = "deployments per day") -> str:
    """One bar per day, its failed part drawn apart (and named in each bar's tooltip, not by colour alone)."""
    if not days:
        return f'<svg class="chart" role="img" aria-label="{escape(title)}: no data" viewBox="0 0 {WIDTH} 30">' \
               '<text x="4" y="20">no deployments in this window</text></svg>'
    top = max(max(total for _, total, _ in days), 1)
    slot = (WIDTH - PAD) / len(days)
    bar = max(slot - 2, 1)
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT + PAD}" '
             'preserveAspectRatio="none">',
             f'<text class="axis" x="0" y="10">{top}</text>',
             f'<line class="axis" x1="{PAD}" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}"/>']
    for n, (day, total, failed) in enumerate(days):
        x = PAD + n * slot
        height = HEIGHT * total / top
        failed_height = HEIGHT * failed / top
        label = f"{day.isoformat()}: {total} deployment(s), {failed} failed or rolled back"
        parts.append(f'<g><title>{escape(label)}</title>'
                     f'<rect class="ok" x="{x:.1f}" y="{HEIGHT - height:.1f}" width="{bar:.1f}" '
                     f'height="{height - failed_height:.1f}"/>'
                     f'<rect class="bad" x="{x:.1f}" y="{HEIGHT - failed_height:.1f}" width="{bar:.1f}" '
                     f'height="{failed_height:.1f}"/></g>')
    first, last = days[0][0].isoformat(), days[-1][0].isoformat()
    parts.append(f'<text class="axis" x="{PAD}" y="{HEIGHT + PAD - 4}">{first}</text>')
    parts.append(f'<text class="axis" x="{WIDTH}" y="{HEIGHT + PAD - 4}" text-anchor="end">{last}</text>')
    parts.append("</svg>")
    return "".join(parts)
