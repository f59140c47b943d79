"""Expected mIoU of random labellings on the smoke eval set (200 val images, 64 px): the chance level.

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/diagnostics/issue14/chance.py
"""
import numpy as np
from ovsnet_jax import metrics
from ovsnet_jax.input import shapes
ds = shapes.get_shapes('val', semantic=True, num_images=200, image_size=64, seed=0, max_shapes=4)
K = 13
conf_uniform = np.zeros((K, K)); gt_counts = np.zeros(K)
for i in range(len(ds)):
  ex = ds[i]; lab = ex['sem_seg']
  lab = np.asarray(lab).ravel(); lab = lab[lab < K]
  gt_counts += np.bincount(lab, minlength=K)
# uniform random labelling: expected confusion = gt_counts[:,None]/K
conf_uniform = np.repeat(gt_counts[:, None] / K, K, 1)
seen = shapes.seen_mask('val')
r = metrics.segmentation_metrics(conf_uniform, [n[0] for n in shapes.class_names('val')], seen)
print('uniform random per pixel:', {k: round(r[k], 2) for k in ('mIoU', 'mIoU-seen', 'mIoU-unseen')})
# prior-matched random labelling (predict class c with prob p_c)
p = gt_counts / gt_counts.sum()
conf_prior = gt_counts[:, None] * p[None, :]
r = metrics.segmentation_metrics(conf_prior, None, seen)
print('prior-matched random:', {k: round(r[k], 2) for k in ('mIoU', 'mIoU-seen', 'mIoU-unseen')})
print('pixel share %', dict(zip([n[0] for n in shapes.class_names('val')], np.round(100 * p, 1))))
