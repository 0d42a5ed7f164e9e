"""Line plots as standalone SVG files, for the benchmark's curves (docs/performance.md shows them).

A plot library (matplotlib) would be a large dependency for a few line charts; SVG is text, diffs well in git,
and renders in any browser and on the code host. Axes may be logarithmic (the scale curves span 10 to 10^7).
"""

import math
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 40, 50
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _ticks(lo, hi, log):
    if log:
        return [10 ** e for e in range(int(math.floor(math.log10(lo))), int(math.ceil(math.log10(hi))) + 1)]
    if hi == lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / 4))
    for mult in (1, 2, 5, 10):
        if (hi - lo) / (step * mult) <= 6:
            step *= mult
            break
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2)]


def _label(v):
    if v == 0:
        return "0"
    if abs(v) >= 1e4 and math.log10(abs(v)) % 1 == 0:
        return "1e%d" % round(math.log10(abs(v)))
    if abs(v) >= 1000:
        return "{:,.0f}".format(v)
    return ("%.3g" % v)


def line_plot(series, title, xlabel, ylabel, logx=False, logy=False):
    """SVG text of a line plot. ``series``: ``{name: [(x, y), ...]}`` (points with a None y are left out)."""
    pts = {name: [(x, y) for x, y in points if y is not None and (x > 0 or not logx) and (y > 0 or not logy)]
           for name, points in series.items()}
    xs = [x for p in pts.values() for x, _ in p]
    ys = [y for p in pts.values() for _, y in p]
    if not xs:
        raise ValueError("nothing to plot: every series is empty")
    x_ticks = _ticks(min(xs), max(xs), logx)
    y_ticks = _ticks(0 if not logy else min(ys), max(ys), logy)
    x0, x1 = x_ticks[0], x_ticks[-1]
    y0, y1 = y_ticks[0], y_ticks[-1]
    fx = (lambda v: math.log10(v)) if logx else (lambda v: v)
    fy = (lambda v: math.log10(v)) if logy else (lambda v: v)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(v):
        return LEFT + pw * (fx(v) - fx(x0)) / ((fx(x1) - fx(x0)) or 1)

    def sy(v):
        return TOP + ph - ph * (fy(v) - fy(y0)) / ((fy(y1) - fy(y0)) or 1)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif" font-size="12">' % (WIDTH, HEIGHT, WIDTH, HEIGHT),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="14" font-weight="bold">%s</text>' % (LEFT, escape(title))]
    for t in x_ticks:
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (sx(t), TOP, sx(t), TOP + ph))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (sx(t), TOP + ph + 16, _label(t)))
    for t in y_ticks:
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (LEFT, sy(t), LEFT + pw, sy(t)))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (LEFT - 6, sy(t) + 4, _label(t)))
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>' % (LEFT, TOP, pw, ph))
    out.append('<text x="%d" y="%d" text-anchor="middle">%s</text>' % (LEFT + pw / 2, HEIGHT - 10,
                                                                        escape(xlabel)))
    out.append('<text transform="translate(16 %d) rotate(-90)" text-anchor="middle">%s</text>' % (
        TOP + ph / 2, escape(ylabel)))
    for i, (name, points) in enumerate(sorted(pts.items())):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join("%.1f,%.1f" % (sx(x), sy(y)) for x, y in sorted(points))
        out.append('<polyline class="series" data-name="%s" fill="none" stroke="%s" stroke-width="2" '
                   'points="%s"/>' % (escape(name), colour, path))
        for x, y in points:
            out.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s: %s, %s</title></circle>' % (
                sx(x), sy(y), colour, escape(name), _label(x), _label(y)))
        ly = TOP + 14 + 18 * i
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>' % (
            LEFT + pw + 12, ly - 4, LEFT + pw + 32, ly - 4, colour))
        out.append('<text x="%d" y="%d">%s</text>' % (LEFT + pw + 38, ly, escape(name)))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_plot(path, series, title, xlabel, ylabel, **kw):
    with open(path, "w") as f:
        f.write(line_plot(series, title, xlabel, ylabel, **kw))
    return path
