"""Semantic-segmentation metrics: confusion matrix on device, detectron2's current mIoU formula.

Convention: `conf[gt, pred]` counts pixels of ground-truth class `gt` predicted as `pred`
(detectron2 stores the transpose, `conf[pred, gt]`, plus an ignore row/column).

mIoU follows detectron2's `SemSegEvaluator` after commit f3c1bc19 (2022-07-06): a class enters the
mean only if it has ground-truth pixels (`acc_valid & union > 0`). The older formula also divided by
classes that were only predicted (counted as IoU 0), which lowers PC-459 / A-847 numbers
(IMPLEMENTATION_NOTES.md 2h).
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ovsnet_jax.input import IGNORE_LABEL


def confusion_matrix(pred: jax.Array, label: jax.Array, num_classes: int) -> jax.Array:
  """Pixel confusion matrix of one batch, jit-able (scatter-add).

  Args:
    pred: int (...,) predicted class per pixel, in [0, K).
    label: int (...,) same shape; IGNORE_LABEL (and any value outside [0, K)) is not counted.
    num_classes: K.
  Returns:
    int32 (K, K) counts, rows = ground truth, columns = prediction.
  """
  if pred.shape != label.shape:
    raise ValueError(f'confusion_matrix: pred {pred.shape} and label {label.shape} differ')
  label = label.reshape(-1).astype(jnp.int32)
  pred = jnp.clip(pred.reshape(-1).astype(jnp.int32), 0, num_classes - 1)
  counted = (label != IGNORE_LABEL) & (label >= 0) & (label < num_classes)
  index = jnp.where(counted, label * num_classes + pred, 0)  # (N,)
  flat = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index].add(counted.astype(jnp.int32))
  return flat.reshape(num_classes, num_classes)


def segmentation_metrics(conf: np.ndarray, class_names: Optional[Sequence[str]] = None,
                         seen: Optional[Sequence[bool]] = None) -> dict:
  """detectron2's SemSegEvaluator results from a (K, K) confusion matrix (rows gt, cols pred).

  Args:
    conf: integer (K, K) accumulated counts.
    class_names: K names for the per-class entries (default: class indices).
    seen: optional K booleans, True for classes seen in training; adds mIoU-seen, mIoU-unseen and
      their harmonic mean hIoU.
  Returns:
    {'mIoU', 'fwIoU', 'mACC', 'pACC'} in percent, 'IoU' and 'ACC' dicts name -> percent
    (NaN for classes without ground truth), and the seen/unseen figures when `seen` is given.
  """
  conf = np.asarray(conf, np.float64)
  k = conf.shape[0]
  if conf.shape != (k, k):
    raise ValueError(f'conf: expected a square (K, K) matrix, got shape {conf.shape}')
  names = [str(i) for i in range(k)] if class_names is None else list(class_names)
  if len(names) != k:
    raise ValueError(f'class_names: expected {k} names (one per class), got {len(names)}')
  tp = np.diag(conf)
  pos_gt = conf.sum(1)
  pos_pred = conf.sum(0)
  union = pos_gt + pos_pred - tp
  acc_valid = pos_gt > 0
  iou_valid = acc_valid & (union > 0)
  acc = np.full(k, np.nan)
  iou = np.full(k, np.nan)
  acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
  iou[iou_valid] = tp[iou_valid] / union[iou_valid]
  total = pos_gt.sum()
  weights = pos_gt / max(total, 1.0)

  def mean(values, valid):
    return float(100 * values[valid].sum() / valid.sum()) if valid.any() else float('nan')

  res = {
      'mIoU': mean(iou, iou_valid),
      'fwIoU': float(100 * (iou[iou_valid] * weights[iou_valid]).sum()),
      'mACC': mean(acc, acc_valid),
      'pACC': float(100 * tp.sum() / total) if total > 0 else float('nan'),
      'IoU': {n: float(100 * v) for n, v in zip(names, iou)},
      'ACC': {n: float(100 * v) for n, v in zip(names, acc)},
  }
  if seen is not None:
    seen = np.asarray(seen, bool)
    if seen.shape != (k,):
      raise ValueError(f'seen: expected {k} booleans (one per class), got shape {seen.shape}')
    s, u = mean(iou, iou_valid & seen), mean(iou, iou_valid & ~seen)
    res['mIoU-seen'], res['mIoU-unseen'] = s, u
    res['hIoU'] = 2 * s * u / (s + u) if (s + u) > 0 else float('nan')
  return res


def chance_metrics(conf: np.ndarray, seen: Optional[Sequence[bool]] = None) -> dict:
  """The scores a random labelling would get on the same ground truth (the chance level).

  The labelling draws every pixel's class independently with the ground truth's class frequencies
  p_k (prior-matched; it scores higher than a uniform draw over the vocabulary); its expected
  confusion matrix is n_j * p_k (n_j: ground-truth pixels of class j), scored as `conf` is.

  Returns:
    {'mIoU', 'mIoU-seen', 'mIoU-unseen', 'hIoU'} (the last three when `seen` is given), percent.
  """
  conf = np.asarray(conf, np.float64)
  gt = conf.sum(1)  # (K,)
  expected = gt[:, None] * (gt / max(gt.sum(), 1.0))[None, :]  # (K, K)
  res = segmentation_metrics(expected, None, seen)
  return {k: res[k] for k in ('mIoU', 'mIoU-seen', 'mIoU-unseen', 'hIoU') if k in res}


class ConfusionAccumulator:
  """Sums per-batch device confusion matrices, flushing to a host int64 total before int32 overflow.

  `add(conf, num_pixels)` keeps the running sum on device; every ~2**30 counted pixels it is moved
  into the host total, so no device cell can overflow.
  """

  def __init__(self, num_classes: int, flush_pixels: int = 2**30):
    self.num_classes = num_classes
    self.flush_pixels = flush_pixels
    self._host = np.zeros((num_classes, num_classes), np.int64)
    self._device = None
    self._pending = 0

  def add(self, conf: jax.Array, num_pixels: int) -> None:
    """conf: int32 (K, K) of one batch; num_pixels: an upper bound of the pixels it counted."""
    if self._pending + num_pixels > self.flush_pixels:
      self._flush()
    self._device = conf if self._device is None else self._device + conf
    self._pending += num_pixels

  def _flush(self) -> None:
    if self._device is not None:
      self._host += np.asarray(jax.device_get(self._device), np.int64)
    self._device, self._pending = None, 0

  def result(self) -> np.ndarray:
    """int64 (K, K) total so far."""
    self._flush()
    return self._host.copy()
