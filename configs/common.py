"""Shared config pieces for every OVSNet experiment.

Each experiment file (``configs/ovsnet_base.py``, ``configs/smoke.py``, ...) calls
``get_base_config()`` and overrides what differs. Every field is overridable from the command
line, e.g. ``--config.model.gfa.omega=0.5``.

Points the paper leaves open are marked [UNVERIFIED] with the default from
``IMPLEMENTATION_NOTES.md``.
"""
import ml_collections


def get_model_config(clip_variant: str = 'convnext_base_w_320') -> ml_collections.ConfigDict:
  """Model hyper-parameters (FC-CLIP / Mask2Former defaults, OVSNet additions)."""
  m = ml_collections.ConfigDict()
  m.clip_variant = clip_variant
  # Pixel mean/std of OpenAI CLIP, times 255 (images enter the model as RGB 0..255).
  m.pixel_mean = (122.7709383, 116.7460125, 104.09373615)
  m.pixel_std = (68.5005327, 66.6321579, 70.32316305)
  m.compute_dtype = 'bfloat16'  # trunk + decoder matmuls; GFA, losses and the pixel decoder in fp32.

  m.pixel_decoder = ml_collections.ConfigDict()
  m.pixel_decoder.conv_dim = 256
  m.pixel_decoder.mask_dim = 256
  m.pixel_decoder.num_layers = 6
  m.pixel_decoder.num_heads = 8
  m.pixel_decoder.num_points = 4
  m.pixel_decoder.ffn_dim = 1024
  m.pixel_decoder.num_groups = 32  # GroupNorm groups
  # Deformable-attention sampling (ovsnet_jax/models/ms_deform_attn.py), all exact: 'window' (default:
  # one gather of a lane-dense 2x2 window per sample), 'gather' (4 corner rows of Dh), 'gather_corners'
  # (4 gathers, each reduced at once) or 'onehot' (dense matmul; small maps only).
  m.pixel_decoder.deform_impl = 'window'
  # Queries sampled at a time (lax.map over chunks; 0 = all at once): bounds the (B, chunk, M, L*P, 4*Dh)
  # gathered windows, ~0.4 GB per chunk of 4096 at B=2 per chip.
  m.pixel_decoder.deform_query_chunk = 4096
  # Recompute the deformable sampling in the backward pass: keeps ~B*Lq*M*L*P*4*Dh floats per
  # encoder layer out of the saved activations (2.1 GB per layer at 2 images of 1024^2) for some time.
  m.pixel_decoder.remat_deform = True
  # lax.scan over the encoder layers' stacked params (compile time, code size); same params and outputs.
  m.pixel_decoder.scan_layers = True
  # Recompute each scanned encoder layer in the backward pass: the peak of the OVSNet-B train step on
  # v5e held 6 layers' saved intermediates (~4 GiB per chip; `launch/compile_for.py --peak_memory`).
  m.pixel_decoder.remat_layers = True

  m.decoder = ml_collections.ConfigDict()
  m.decoder.num_queries = 100  # FC-CLIP-L uses 250.
  m.decoder.hidden_dim = 256
  m.decoder.num_heads = 8
  m.decoder.ffn_dim = 2048
  m.decoder.num_layers = 9  # 9 layers -> 10 predictions (deep supervision).
  # lax.scan over rounds of 3 layers (one per memory level) with stacked params; same params and outputs.
  m.decoder.scan_layers = True
  # Recompute each scanned round of 3 layers in the backward pass (its attention masks: ~1 GiB per v5e
  # chip for OVSNet-B at the peak).
  m.decoder.remat_layers = True

  # Fusion of query embeddings F_Q and mask-pooled CLIP features F_C (Table 4a).
  # 'none' (baseline, FC-CLIP), 'gfa' (OVSNet), 'self_attn', 'cross_attn' (learned alternatives).
  m.fusion = 'gfa'
  m.gfa = ml_collections.ConfigDict()
  # [UNVERIFIED] Which Z (models/gfa.py): 'query' (Q x Q over an image's queries, un-normalised in (2):
  # diverges past a spectral bound of 1 and can collapse every F_C^inf onto one direction), 'channel'
  # (D x D per query; F_C^inf stays parallel to F_C^0), 'per_query' (a scalar per query, "we omit the
  # query index": F_C^inf mixes that query's F_C^0 and F_Q^0 only) or 'random_walk' (Q x Q with both
  # transitions normalised: converges for every omega < 1).
  # Default by measurement (issue 13.1c; README "The miniature open world: Tables 3 and 4"): on the open
  # world's learned features with the paper's Q = 100 queries (200 steps, 1 seed), 'query' passed its
  # convergence bound (spectral bound 1.07 at the last log step, one GFA warning: eq. (4) is then no
  # longer the limit of eq. (1)-(2)), while 'per_query' (0.02), 'channel' (0.07) and 'random_walk' (0.25)
  # stayed far inside; at Q = 16 'query' read 0.14. mIoU does not separate the readings there (every
  # one below chance). Of the three that cannot diverge, 'random_walk' homogenised the embeddings (fused
  # cosine 0.43 vs 0.19 for F_C^0) and 'channel' leaves F_C^inf parallel to F_C^0 (classifying it is
  # classifying F_C^0); 'per_query' kept them apart (0.21 vs 0.21) and is bounded at any Q
  # (|w^2 A| <= w^2 lam = 0.05). On synthetic unit vectors 'query' collapses at Q = 100 from mean
  # cosine 0.18 (tests/test_gfa.py). Every reading stays selectable; gfa/* in TensorBoard and the
  # warning watch whichever runs.
  m.gfa.affinity = 'per_query'
  m.gfa.lam = 0.2  # lambda, the affinity scale (paper).
  m.gfa.omega = 0.5  # [UNVERIFIED] fusion degree, in (0, 1).
  m.gfa.norm = 'softmax'  # [UNVERIFIED] 'softmax' (over the CLIP axis) | 'l1' (row) | 'none'.
  m.gfa.l2_normalize = True  # [UNVERIFIED] L2-normalise F_C^0 and F_Q^0 before Z.
  m.gfa.stop_gradient = False  # [UNVERIFIED] stop gradients through the GFA output.
  m.gfa.mode = 'closed_form'  # 'closed_form' (eq. 4, jnp.linalg.solve) | 'iterative' (eq. 1-2).
  m.gfa.num_iters = 10  # t, for mode='iterative'.
  m.gfa.classify = 'fused_clip'  # [UNVERIFIED] which embedding is classified: F_C^inf ('fused_clip').
  m.gfa.all_layers = True  # [UNVERIFIED] fuse every deep-supervision prediction (any fusion).
  m.gfa.detach_affinity = False  # [UNVERIFIED] no gradient through Z / Norm(Z) (fixed linear mix).
  # Ill-conditioned I - w^2 A (cond_1 > max_condition or singular): counted in out['gfa'] (the training
  # log's gfa/num_singular; the loop warns once if log_singular), then 'fallback' (F_C^0, F_Q^0 for
  # that image) or 'regularize' (Tikhonov least squares).
  m.gfa.max_condition = 1e6
  m.gfa.on_singular = 'fallback'
  m.gfa.log_singular = True

  # Learned fusions of Table 4a (models/attention_fusion.py), used when fusion is self/cross_attn.
  m.attn_fusion = ml_collections.ConfigDict()
  m.attn_fusion.num_heads = 8
  m.attn_fusion.mlp_ratio = 2
  m.attn_fusion.num_layers = 1

  # Inference ensemble (FC-CLIP): in-vocabulary logits (of the classified embedding, F_C^inf with
  # GFA) geometrically averaged with the frozen CLIP's out-of-vocabulary logits of F_C^0.
  # [UNVERIFIED] for GFA models: the paper does not say whether OVSNet keeps FC-CLIP's ensemble on
  # top of GFA; it is kept by default (the FC-CLIP code OVSNet builds on), enabled=False drops it.
  m.ensemble = ml_collections.ConfigDict()
  m.ensemble.enabled = True
  m.ensemble.alpha = 0.4  # seen classes
  m.ensemble.beta = 0.8  # unseen classes
  m.ensemble.on_valid_mask = False  # True only for ResNet CLIPs.
  m.ensemble.class_chunk = 1024  # classes scored per chunk at inference (large vocabularies).
  return m


def get_base_config() -> ml_collections.ConfigDict:
  """The full experiment config: model, data, training, evaluation."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = get_model_config()

  # Text classifier (prompted CLIP text embeddings, cached per vocabulary).
  c.text = ml_collections.ConfigDict()
  c.text.templates = 'vild'  # the 14 VILD templates
  c.text.cache_dir = ''  # '' -> the user cache ($OVSNET_JAX_CACHE/text or ~/.cache/ovsnet_jax/text); 'none' -> off

  c.clip_checkpoint = ''  # directory written by launch/convert_open_clip.py; '' -> random init.

  c.data = ml_collections.ConfigDict()
  c.data.train = 'coco_panoptic'
  c.data.root = ''  # dataset root ($DETECTRON2_DATASETS layout)
  c.data.crop_size = 1024
  c.data.scale_range = (0.1, 2.0)
  c.data.max_masks = 100  # padded number of ground-truth segments per image
  c.data.num_workers = 8  # grain worker processes per host; 0 = in process
  c.data.worker_buffer_size = 2  # batches buffered per worker
  c.data.read_threads = 2  # element-prefetch threads per process (grain's default 16 oversubscribes)
  c.data.prefetch = 4  # element-prefetch buffer per process (grain's default 500)
  # Paper: "colour augmentation"; FC-CLIP's LSJ has none -> Mask2Former's ColorAugSSD (transforms.py).
  c.data.color_aug = True
  # FC-CLIP's coco_panoptic_new_baseline_dataset_mapper keeps every non-crowd segment after LSJ, even
  # one cropped away (empty mask): it is still matched, counted in num_masks and classified.
  # False: drop targets left without pixels (the previous behaviour here).
  c.data.keep_cropped_segments = True
  c.data.eval_min_size = 800
  c.data.eval_max_size = 1333
  # True: the eval dataset's own FC-CLIP test size (datasets.DATASETS[...].test_size, e.g. Cityscapes
  # 1024/2560) wins over eval_min_size / eval_max_size (which 'shapes' always uses).
  c.data.eval_size_from_dataset = True
  c.data.eval_num_workers = 0
  c.data.size_divisibility = 32

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 8  # global
  c.train.num_steps = 60_000
  c.train.lr = 1e-4
  c.train.weight_decay = 0.05
  c.train.warmup_steps = 10
  # FC-CLIP / Mask2Former COCO: WARMUP_FACTOR 1.0 (WARMUP_ITERS 10), i.e. no warmup at all.
  # < 1 ramps linearly from warmup_factor * lr over warmup_steps (detectron2 WarmupPolyLR; was 0.001).
  c.train.warmup_factor = 1.0
  c.train.poly_power = 0.9
  c.train.grad_clip = 0.01
  # Parameters without weight decay. 'fcclip' (FC-CLIP train_net.py build_optimizer): only
  # normalisation scales/offsets (LayerNorm, GroupNorm) and nn.Embedding tables (decoder
  # query_feat, query_embed, level_embed; void_embedding); biases, the logit scale, the
  # sampling-offset biases and the pixel decoder's level_embed (an nn.Parameter) are decayed.
  # 'all_1d': also every bias / scalar (ndim <= 1) and the pixel decoder's level_embed.
  c.train.no_decay = 'fcclip'
  c.train.class_weight = 2.0
  c.train.mask_weight = 5.0
  c.train.dice_weight = 5.0
  c.train.no_object_weight = 0.1
  c.train.num_points = 12544
  c.train.oversample_ratio = 3.0
  c.train.importance_sample_ratio = 0.75
  # [UNVERIFIED] Point-sampling budget: the matched masks of a batch are compacted into
  # batch_size * min(this, max_masks, num_queries) slots (0: every target slot). A batch with more
  # matched targets is rejected on the host (losses.criterion.check_mask_budget).
  c.train.sampled_masks_per_image = 32
  # PRNG of the point coordinates: 'threefry' | 'rbg' | 'auto' (rbg on TPU/GPU, threefry on CPU).
  c.train.point_rng = 'auto'
  c.train.proxy_calibration = ml_collections.ConfigDict()
  c.train.proxy_calibration.enabled = True
  c.train.proxy_calibration.gamma = 2.0  # Beta(gamma, gamma); gamma = 1 is the paper's "off".
  c.train.proxy_calibration.weight = 1.0
  # Beta(1, 1) is uniform, not "no PC": set enabled = False to really switch PC off.
  c.train.proxy_calibration.synonyms = 'mean'  # [UNVERIFIED] F_T: 'mean' of synonyms | 'first'.
  c.train.proxy_calibration.alpha_per_pair = True  # [UNVERIFIED] alpha per pair or per batch.
  c.train.proxy_calibration.all_layers = False  # [UNVERIFIED] PC on the last layer only.
  # Model outputs mixed as F_Q and F_C (section 4.3: "having the aggregated query embeddings").
  # 'fused_query' / 'fused_clip' are the aggregated embeddings: GFA's F_Q^inf / F_C^inf; with an
  # attention fusion the fused (classified) embedding / F_C^0; without fusion (Table 3's "+PC"
  # row) F_Q and the raw mask-pooled CLIP feature F_C^0, so there L_PC is logged but carries no
  # gradient (frozen CLIP, detached binarised masks) and only L_PQ trains. [UNVERIFIED] the +PC
  # row's F_C. Also: 'query_embeds' (F_Q^0), 'clip_embeds' (F_C^0), 'fused_embeds' (classified).
  c.train.proxy_calibration.query_source = 'fused_query'
  c.train.proxy_calibration.clip_source = 'fused_clip'
  c.train.log_every = 20
  c.train.checkpoint_every = 5000
  c.train.keep_checkpoints = 3
  c.train.eval_every = 5000
  c.train.shard_optimizer_state = False
  c.train.stop_at_step = 0  # end this run (after a checkpoint) at this step; 0 -> num_steps. Preemption tests.
  c.train.log_dir = ''  # '' -> <workdir>/tensorboard
  c.train.async_checkpointing = True
  # A step with a non-finite loss or gradient norm applies no update; by default it also ends the run
  # (an error naming the step, no later checkpoint). True: skip such batches and count them instead.
  c.train.skip_nonfinite = False
  # Multi-host: jax.distributed.initialize(coordinator, num_processes, process_id); '' and 0
  # -> read from the environment / cluster (no-op on a single host).
  c.train.coordinator_address = ''
  c.train.num_processes = 0
  c.train.process_id = -1

  c.eval = ml_collections.ConfigDict()
  c.eval.dataset = 'ade150'
  c.eval.batch_size = 1
  c.eval.max_images = 0  # 0 -> all
  # Test-time precision of the model (trunk and decoder matmuls), independent of model.compute_dtype:
  # FC-CLIP / detectron2 evaluate in float32 (no autocast); bfloat16 moves the out-of-vocabulary
  # logits (scaled by 100) that unseen classes depend on. 'bfloat16' is the faster option.
  # Measured on the miniature open world (configs/smoke.py, a weak 600-step checkpoint, 100 held-out
  # images): float32 mIoU 3.07 (seen 3.70, unseen 2.06) vs bfloat16 2.89 (3.42, 2.04). Its 64x64 images
  # give the same input under every pad_mode (a 64x64 canvas), so there the padding changes nothing.
  c.eval.compute_dtype = 'float32'
  # Image padding: 'multiple' (FC-CLIP / detectron2: each batch to its largest image rounded up to a
  # multiple of 32; one compile per shape, kept across runs by the launchers' persistent compilation
  # cache, see ovsnet_jax/compilation_cache.py), 'orientation' (landscape or portrait canvas: two
  # compiles, faster; the padding changes the model's input, hence its output), 'fixed' (square
  # canvas and label_canvas; required with several hosts).
  c.eval.pad_mode = 'multiple'
  c.eval.label_bucket = 128  # original-size labels padded (ignore) to a multiple of this
  c.eval.label_canvas = (0, 0)  # pad_mode='fixed': (H, W) >= every original label size
  c.eval.class_chunk = 128  # classes resized to the original size at a time (memory bound)
  c.eval.per_class = False  # print per-class IoU
  c.eval.output = ''  # results JSON; '' -> next to the checkpoint (launch/eval.py)
  return c
