"""Plots: labels that would overlap go into a legend."""

from matplotlib.image import imread

from palimpsest.plotting import _crowded, plot_points


def test_points_that_crowd_together_are_named_in_a_legend():
    assert _crowded([(0.50, 0.90), (0.52, 0.91), (0.1, 0.1)], shares=True)
    assert not _crowded([(0.1, 0.9), (0.5, 0.9), (0.9, 0.1)], shares=True)
    # on a fitted x axis the distance is a share of the data's range
    assert not _crowded([(10.0, 0.5), (20.0, 0.5), (30.0, 0.52)], shares=False)


def test_a_frontier_plot_is_written_either_way(tmp_path):
    for name, points in (
        ("apart", {"a": (0.1, 0.9), "b": (0.9, 0.1)}),
        ("close", {"a": (0.5, 0.5), "b": (0.51, 0.5)}),
    ):
        path = plot_points(
            points, tmp_path / f"{name}.png", title="t", xlabel="x", ylabel="y", reference_x=0.3
        )
        assert imread(path).shape[0] > 100
