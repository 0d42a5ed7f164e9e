"""The benchmark's SVG plots (tools/plot_svg.py): well-formed SVG whose points sit where the data says."""

import xml.etree.ElementTree as ET

import pytest

from tools.plot_svg import HEIGHT, LEFT, TOP, BOTTOM, WIDTH, RIGHT, line_plot

NS = {"svg": "http://www.w3.org/2000/svg"}


def _series(svg):
    root = ET.fromstring(svg)
    return {p.get("data-name"): [tuple(map(float, xy.split(","))) for xy in p.get("points").split()]
            for p in root.iterfind(".//svg:polyline", NS)}


def test_each_series_is_a_polyline_with_its_points_in_x_order():
    svg = line_plot({"mqtt": [(1000, 0.2), (1, 0.1), (100, 0.4)], "http": [(1, 0.3), (1000, 0.1)]},
                    "latency", "rate", "s", logx=True)
    series = _series(svg)
    assert set(series) == {"mqtt", "http"}
    xs = [x for x, _ in series["mqtt"]]
    assert len(xs) == 3 and xs == sorted(xs)
    # log x: 1, 100, 1000 are at 0, 2/3 and 3/3 of the plot's width
    width = WIDTH - LEFT - RIGHT
    assert xs[0] == pytest.approx(LEFT) and xs[2] == pytest.approx(LEFT + width)
    assert xs[1] == pytest.approx(LEFT + width * 2 / 3, abs=0.1)


def test_a_larger_value_is_drawn_higher():
    series = _series(line_plot({"a": [(1, 10.0), (2, 30.0), (3, 20.0)]}, "t", "x", "y"))["a"]
    ys = [y for _, y in series]
    assert ys[1] < ys[2] < ys[0]  # SVG y grows downwards
    assert all(TOP <= y <= HEIGHT - BOTTOM for y in ys)


def test_missing_values_are_left_out_and_an_empty_plot_is_refused():
    series = _series(line_plot({"a": [(1, 1.0), (2, None), (3, 2.0)]}, "t", "x", "y"))
    assert len(series["a"]) == 2
    with pytest.raises(ValueError, match="nothing to plot"):
        line_plot({"a": [(1, None)]}, "t", "x", "y")


def test_text_is_escaped():
    svg = line_plot({"<b>&": [(1, 1.0), (2, 2.0)]}, "a < b", "x", "y")
    ET.fromstring(svg)  # parses: the markup in the names did not break the document
    assert "&lt;b&gt;&amp;" in svg
