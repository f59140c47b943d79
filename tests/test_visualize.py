"""Readable pictures: separated palettes, dataset palettes, overlay arithmetic, scaled legend, label PNG."""
import numpy as np
import pytest

from ovsnet_jax import palettes
from ovsnet_jax import visualize


def min_lab_distance(colors):
  lab = visualize.srgb_to_lab(colors)
  d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
  d[np.arange(len(lab)), np.arange(len(lab))] = np.inf
  return d.min()


@pytest.mark.parametrize('k,min_delta', [(2, 100), (20, 35), (150, 15)])
def test_distinct_palette_is_well_separated(k, min_delta):
  colors = visualize.palette(k)
  assert colors.shape == (k, 3) and colors.dtype == np.uint8
  assert min_lab_distance(colors) > min_delta  # CIELAB; 2.3 is a just-noticeable difference


def test_srgb_to_lab_reference_values():
  np.testing.assert_allclose(visualize.srgb_to_lab(np.array([255, 255, 255])), [100, 0, 0], atol=0.05)
  np.testing.assert_allclose(visualize.srgb_to_lab(np.array([255, 0, 0])), [53.24, 80.09, 67.20], atol=0.1)


def test_dataset_palettes_are_used_and_repaired():
  coco = visualize.palette(133, 'coco_panoptic_133')
  np.testing.assert_array_equal(coco, np.array(palettes.PALETTES['coco_panoptic_133']))  # already distinct
  ade = visualize.palette(150, 'ade150')
  own = np.array(palettes.PALETTES['ade150'])
  assert (ade == own).all(-1).sum() >= 130  # ADE's own colours except its near-duplicates
  assert min_lab_distance(ade) >= visualize.MIN_DELTA_E
  assert min_lab_distance(own) == 0  # road and skyscraper share (140, 140, 140) in ADE's palette
  assert visualize.palette(3, 'ade150').shape == (3, 3)  # another K: the distinct palette


def test_overlay_legend_and_label_png():
  image = np.full((120, 160, 3), 100, np.uint8)
  labels = np.zeros((120, 160), np.int32)
  labels[:, 120:] = 2  # 75% class 0, 25% class 2, class 1 absent
  colors = visualize.palette(3)
  canvas = np.asarray(visualize.render(image, labels, ['cat', 'dog', 'grass'], colors, alpha=0.5))
  np.testing.assert_array_equal(canvas[5, 5], np.round(100 * 0.5 + colors[0] * 0.5).astype(np.uint8))
  np.testing.assert_array_equal(canvas[5, 150], np.round(100 * 0.5 + colors[2] * 0.5).astype(np.uint8))
  legend = canvas[:, 160:]
  swatches = {tuple(p) for p in legend.reshape(-1, 3)}
  assert tuple(colors[0]) in swatches and tuple(colors[2]) in swatches and tuple(colors[1]) not in swatches
  png = visualize.label_png(labels, colors)
  assert png.mode == 'P'
  np.testing.assert_array_equal(np.asarray(png), labels)


def test_legend_text_scales_with_the_image():
  assert visualize.font_size(100, 100) == 12 and visualize.font_size(2000, 3000) == 50
  small = visualize.render(np.zeros((100, 100, 3), np.uint8), np.zeros((100, 100), np.int32), ['wall'],
                           visualize.palette(1))
  large = visualize.render(np.zeros((2000, 2000, 3), np.uint8), np.zeros((2000, 2000), np.int32), ['wall'],
                           visualize.palette(1))
  assert (large.width - 2000) > 3 * (small.width - 100)  # legend column grows with the text


def test_segment_labels_are_drawn_inside_the_segment():
  image = np.full((200, 300, 3), 128, np.uint8)
  labels = np.zeros((200, 300), np.int32)
  labels[:, 150:] = 1
  colors = np.array([[200, 30, 30], [30, 30, 200]], np.uint8)
  plain = np.asarray(visualize.render(image, labels, ['left', 'right'], colors, legend=False))
  named = np.asarray(visualize.render(image, labels, ['left', 'right'], colors, legend=False, segment_labels=True))
  changed = np.argwhere((plain != named).any(-1))
  assert len(changed) > 50
  ys, xs = changed[:, 0], changed[:, 1]
  assert ((xs < 150).any() and (xs >= 150).any())  # one label per segment, centred in each
  assert abs(np.median(xs[xs < 150]) - 75) < 15 and abs(np.median(ys) - 100) < 15


def test_label_png_refuses_more_than_256_classes():
  with pytest.raises(ValueError, match='300 classes do not fit an 8-bit palette PNG'):
    visualize.label_png(np.zeros((2, 2), np.int32), visualize.distinct_colors(300))
