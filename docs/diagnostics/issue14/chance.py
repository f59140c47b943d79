"""Expected mIoU of random labellings on the smoke eval set (200 val images, 64 px): the chance level.

  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python docs/diagnostics/issue14/chance.py
"""
import numpy as np
from ovsnet_jax import metrics
from ovsnet_jax.input import shapes
ds = shapes.get_shapes('val', semantic=True, num_images=200, image_size=64, seed=0, max_shapes=4)
names = [n[0] for n in shapes.class_names('val')]
seen = shapes.seen_mask('val')
gt_counts = np.zeros(len(names))
for i in range(len(ds)):
  lab = np.asarray(ds[i]['sem_seg']).ravel()
  gt_counts += np.bincount(lab[(lab >= 0) & (lab < len(names))], minlength=len(names))
# uniform random labelling: expected confusion n_j / K in every column
r = metrics.segmentation_metrics(np.repeat(gt_counts[:, None] / len(names), len(names), 1), names, seen)
print('uniform random per pixel:', {k: round(r[k], 2) for k in ('mIoU', 'mIoU-seen', 'mIoU-unseen')})
# the class frequencies' random labelling: what every evaluation reports (any confusion with these rows)
r = metrics.chance_metrics(np.diag(gt_counts), seen)
print('prior-matched random:', {k: round(r[k], 2) for k in ('mIoU', 'mIoU-seen', 'mIoU-unseen')})
print('pixel share %', dict(zip(names, np.round(100 * gt_counts / gt_counts.sum(), 1))))
