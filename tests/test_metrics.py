"""Metrics vs a direct NumPy transcription of detectron2's SemSegEvaluator (new formula)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsnet_jax import metrics
from ovsnet_jax.input import IGNORE_LABEL


def d2_evaluate(preds, gts, k, ignore=IGNORE_LABEL):
  """detectron2 SemSegEvaluator after f3c1bc19, written from IMPLEMENTATION_NOTES 2h.

  Its matrix is (K+1, K+1) indexed [pred, gt] with gt=ignore mapped to K.
  """
  conf = np.zeros((k + 1, k + 1), np.int64)
  for pred, gt in zip(preds, gts):
    gt = np.where(gt == ignore, k, gt)
    conf += np.bincount((k + 1) * pred.reshape(-1) + gt.reshape(-1),
                        minlength=(k + 1)**2).reshape(k + 1, k + 1)
  acc = np.full(k, np.nan, float)
  iou = np.full(k, np.nan, float)
  tp = conf.diagonal()[:-1].astype(float)
  pos_gt = np.sum(conf[:-1, :-1], axis=0).astype(float)
  class_weights = pos_gt / np.sum(pos_gt)
  pos_pred = np.sum(conf[:-1, :-1], axis=1).astype(float)
  acc_valid = pos_gt > 0
  acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
  union = pos_gt + pos_pred - tp
  iou_valid = np.logical_and(acc_valid, union > 0)
  iou[iou_valid] = tp[iou_valid] / union[iou_valid]
  macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
  miou = np.sum(iou[iou_valid]) / np.sum(iou_valid)
  fiou = np.sum(iou[iou_valid] * class_weights[iou_valid])
  pacc = np.sum(tp) / np.sum(pos_gt)
  return {'mIoU': 100 * miou, 'fwIoU': 100 * fiou, 'mACC': 100 * macc, 'pACC': 100 * pacc, 'iou': 100 * iou}


def d2_old_miou(conf_gt_pred):
  """The pre-2022 formula: classes only predicted count with IoU 0."""
  tp = np.diag(conf_gt_pred).astype(float)
  pos_gt, pos_pred = conf_gt_pred.sum(1), conf_gt_pred.sum(0)
  acc_valid = pos_gt > 0
  iou = tp / np.maximum(pos_gt + pos_pred - tp, 1)
  return 100 * iou[acc_valid].sum() / ((pos_gt + pos_pred) > 0).sum()


def _conf(preds, gts, k):
  total = np.zeros((k, k), np.int64)
  fn = jax.jit(metrics.confusion_matrix, static_argnums=2)
  for p, g in zip(preds, gts):
    total += np.asarray(fn(jnp.asarray(p), jnp.asarray(g), k))
  return total


@pytest.mark.parametrize('seed', range(5))
def test_random_cases_match_detectron2(seed):
  rng = np.random.default_rng(seed)
  k = int(rng.integers(2, 12))
  gts = [rng.integers(-1, k, size=(int(rng.integers(3, 20)), 17)) for _ in range(3)]
  # Drop one class from the ground truth so the classes-without-gt rule is exercised.
  gts = [np.where(g == k - 1, IGNORE_LABEL, g) for g in gts]
  preds = [rng.integers(0, k, size=g.shape) for g in gts]
  ref = d2_evaluate(preds, gts, k)
  res = metrics.segmentation_metrics(_conf(preds, gts, k))
  for key in ('mIoU', 'fwIoU', 'mACC', 'pACC'):
    np.testing.assert_allclose(res[key], ref[key], rtol=1e-12, err_msg=key)
  np.testing.assert_allclose([res['IoU'][str(i)] for i in range(k)], ref['iou'], rtol=1e-12)
  assert np.isnan(res['IoU'][str(k - 1)])


def test_hand_computed_case_where_old_formula_differs():
  # 3 classes; gt has classes 0 and 1 only; class 2 is predicted on two pixels.
  gt = np.array([[0, 0, 1, 1], [0, 0, 1, -1]])
  pred = np.array([[0, 0, 1, 2], [0, 2, 1, 1]])
  conf = _conf([pred], [gt], 3)
  np.testing.assert_array_equal(conf, [[3, 0, 1], [0, 2, 1], [0, 0, 0]])
  res = metrics.segmentation_metrics(conf, ['a', 'b', 'c'])
  # IoU(a) = 3 / (4 + 3 - 3) = 3/4; IoU(b) = 2 / (3 + 2 - 2) = 2/3; c has no gt: excluded.
  assert res['IoU']['a'] == pytest.approx(75.0)
  assert res['IoU']['b'] == pytest.approx(200 / 3)
  assert np.isnan(res['IoU']['c'])
  assert res['mIoU'] == pytest.approx(100 * (3 / 4 + 2 / 3) / 2)
  assert res['pACC'] == pytest.approx(100 * 5 / 7)
  assert res['mACC'] == pytest.approx(100 * (3 / 4 + 2 / 3) / 2)
  assert res['fwIoU'] == pytest.approx(100 * (4 / 7 * 3 / 4 + 3 / 7 * 2 / 3))
  # The old formula divides by 3 classes (c is predicted): (3/4 + 2/3) / 3.
  assert d2_old_miou(conf) == pytest.approx(100 * (3 / 4 + 2 / 3) / 3)
  assert res['mIoU'] != pytest.approx(d2_old_miou(conf))


def test_seen_unseen_harmonic_mean():
  conf = np.diag([10, 10, 10]).astype(np.int64)
  conf[2, 0] = 10  # class 2: IoU 10 / 20 = 0.5; class 0: 10 / 20 = 0.5
  res = metrics.segmentation_metrics(conf, seen=[True, True, False])
  assert res['mIoU-seen'] == pytest.approx(75.0)
  assert res['mIoU-unseen'] == pytest.approx(50.0)
  assert res['hIoU'] == pytest.approx(2 * 75 * 50 / 125)


def test_chance_level_is_a_random_labelling_with_the_ground_truth_frequencies():
  # Ground truth: 30 pixels of class 0, 10 of class 1 (p = 0.75, 0.25), whatever was predicted.
  conf = np.array([[5, 25], [10, 0]])
  res = metrics.chance_metrics(conf, seen=[True, False])
  # Expected confusion n_j p_k = [[22.5, 7.5], [7.5, 2.5]]: IoU 22.5 / 37.5 = 0.6 and 2.5 / 17.5 = 1/7.
  assert res['mIoU-seen'] == pytest.approx(60.0)
  assert res['mIoU-unseen'] == pytest.approx(100 / 7)
  assert res['mIoU'] == pytest.approx((60 + 100 / 7) / 2)
  assert res['hIoU'] == pytest.approx(2 * 60 * (100 / 7) / (60 + 100 / 7))
  # A sampled random labelling of a larger image scores the same, up to sampling noise.
  rng = np.random.default_rng(0)
  gt = rng.choice(3, size=200_000, p=[0.6, 0.3, 0.1])
  pred = rng.choice(3, size=gt.size, p=np.bincount(gt) / gt.size)
  sampled = metrics.segmentation_metrics(_conf([pred], [gt], 3), seen=[True, True, False])
  expected = metrics.chance_metrics(_conf([gt], [gt], 3), seen=[True, True, False])
  for k in ('mIoU', 'mIoU-seen', 'mIoU-unseen', 'hIoU'):
    assert sampled[k] == pytest.approx(expected[k], abs=0.3), k


def test_perfect_prediction_is_100():
  gt = np.random.default_rng(0).integers(-1, 5, size=(31, 29))
  res = metrics.segmentation_metrics(_conf([np.maximum(gt, 0)], [gt], 5))
  assert res['mIoU'] == 100.0 and res['pACC'] == 100.0 and res['mACC'] == 100.0


def test_accumulator_flushes_and_sums():
  rng = np.random.default_rng(1)
  acc = metrics.ConfusionAccumulator(4, flush_pixels=100)
  total = np.zeros((4, 4), np.int64)
  counted = 0
  for _ in range(5):
    g, p = rng.integers(-1, 4, size=(7, 9)), rng.integers(0, 4, size=(7, 9))
    c = metrics.confusion_matrix(jnp.asarray(p), jnp.asarray(g), 4)
    acc.add(c, g.size)
    total += np.asarray(c)
    counted += int((g >= 0).sum())
  np.testing.assert_array_equal(acc.result(), total)
  assert total.sum() == counted


def test_bad_input_messages():
  with pytest.raises(ValueError, match=r'pred \(2, 3\) and label \(3, 2\) differ'):
    metrics.confusion_matrix(jnp.zeros((2, 3), jnp.int32), jnp.zeros((3, 2), jnp.int32), 2)
  with pytest.raises(ValueError, match='class_names: expected 2 names'):
    metrics.segmentation_metrics(np.eye(2), ['a'])
  with pytest.raises(ValueError, match='seen: expected 2 booleans'):
    metrics.segmentation_metrics(np.eye(2), seen=[True])
