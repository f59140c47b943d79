"""Ahead-of-time compilation for a TPU topology without a TPU: memory, cost and code-size reports.

libtpu compiles for a described topology on any host (deviceless AOT, as MaxText's
train_compile.py does in CPU-only CI): `jax.experimental.topologies.get_topology_desc` gives
abstract devices to build the mesh on; the train step (or the inference forward) is jitted with
the training run's shardings, lowered on `ShapeDtypeStruct`s and compiled. The compiled
executable's `memory_analysis()` gives per-device argument / output / temporary / code bytes and
`cost_analysis()` the FLOPs and bytes accessed per device. `'local'` compiles for this host's
devices instead.

The roofline bound is max(FLOPs / peak FLOP/s, bytes accessed / HBM bandwidth): no step can be
faster. Peaks are the bf16 matmul figures; float32 matmuls run several bf16 passes on the MXU, so
for a float32 model the bound is loose.
"""
import dataclasses
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from ovsnet_jax import cli
from ovsnet_jax import peak_memory

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip figures (Cloud TPU system architecture pages, https://cloud.google.com/tpu/docs/<v>)."""
  name: str
  hbm_bytes: int         # HBM capacity per chip
  peak_flops: float      # bf16 peak FLOP/s per chip
  hbm_bytes_per_s: float  # HBM bandwidth per chip
  source: str


# TPU v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s (https://cloud.google.com/tpu/docs/v4).
# TPU v5e: 197 TFLOP/s bf16, 16 GiB HBM2 at 819 GB/s (https://cloud.google.com/tpu/docs/v5e).
# TPU v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s (https://cloud.google.com/tpu/docs/v5p).
# TPU v6e (Trillium): 918 TFLOP/s bf16, 32 GiB HBM at 1640 GB/s (https://cloud.google.com/tpu/docs/v6e).
CHIPS = {
    'v4': Chip('TPU v4', 32 * GIB, 275e12, 1200e9, 'https://cloud.google.com/tpu/docs/v4'),
    'v5e': Chip('TPU v5e', 16 * GIB, 197e12, 819e9, 'https://cloud.google.com/tpu/docs/v5e'),
    'v5p': Chip('TPU v5p', 95 * GIB, 459e12, 2765e9, 'https://cloud.google.com/tpu/docs/v5p'),
    'v6e': Chip('TPU v6e', 32 * GIB, 918e12, 1640e9, 'https://cloud.google.com/tpu/docs/v6e'),
}
# v4 and v5p chips hold two TensorCores driven as one device ("megacore").
_MEGACORE = ('v4', 'v5p')


def topology_devices(topology: str) -> tuple[list, Optional[Chip]]:
  """Devices for `topology` ('v5e:2x2', 'v4:2x2x1', ... or 'local') and the chip's figures.

  Raises:
    ValueError: the name is not '<v4|v5e|v5p|v6e>:<AxB[xC]>' or 'local', or libtpu rejects it.
  """
  if topology == 'local':
    return jax.devices(), None
  kind, _, shape = topology.partition(':')
  if kind not in CHIPS or not shape:
    raise ValueError(f"--topology={topology!r}: expected 'local' or '<chip>:<shape>' with chip one of "
                     f"{sorted(CHIPS)}, e.g. 'v5e:2x2' or 'v4:2x2x1'")
  # Without a TPU VM libtpu prints warnings about the host unless these are set; they do not
  # change what is compiled. libtpu also takes /tmp/libtpu_lockfile (one process per TPU host):
  # deviceless compiles touch no TPU, so several may run at once (parallel tests, other users).
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-4')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kwargs = {'chip_config_name': 'megacore'} if kind in _MEGACORE else {}
  try:
    desc = topologies.get_topology_desc(topology_name=topology, platform='tpu', **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'--topology={topology!r}: libtpu could not describe it ({e})') from None
  return list(desc.devices), CHIPS[kind]


def _sds(tree: Any, sharding_tree: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sharding_tree)


def abstract_text(config: ml_collections.ConfigDict, num_classes: int, num_synonyms: int) -> dict:
  from ovsnet_jax.models import clip  # pylint: disable=g-import-not-at-top
  d = clip.get_variant(config.model.clip_variant).embed_dim
  return {'embeds': jax.ShapeDtypeStruct((num_classes, num_synonyms, d), jnp.float32),
          'valid': jax.ShapeDtypeStruct((num_classes, num_synonyms), jnp.bool_)}


def lower_train_step(config: ml_collections.ConfigDict, mesh, *, num_classes: int, num_synonyms: int):
  """The training run's jitted step (`sharding.jit_train_step`) lowered on abstract inputs."""
  from ovsnet_jax import sharding, train  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.models import ovsnet  # pylint: disable=g-import-not-at-top
  t, d = config.train, config.data
  sharding.check_batch_size(t.batch_size, mesh)
  model = ovsnet.build_model(config)
  abstract = jax.eval_shape(lambda: train.create_train_state(ovsnet.init_params(config, jax.random.PRNGKey(0)),
                                                             config))
  state_sh = sharding.state_shardings(abstract, mesh, t.shard_optimizer_state)
  rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  b, s, m = t.batch_size, d.crop_size, d.max_masks
  batch = {'image': jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32, sharding=bsh),
           'masks': jax.ShapeDtypeStruct((b, m, s, s), jnp.bool_, sharding=bsh),
           'classes': jax.ShapeDtypeStruct((b, m), jnp.int32, sharding=bsh),
           'valid': jax.ShapeDtypeStruct((b, m), jnp.bool_, sharding=bsh)}
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
  text = _sds(abstract_text(config, num_classes, num_synonyms), jax.tree.map(lambda _: rep, {'embeds': 0, 'valid': 0}))
  step = sharding.jit_train_step(train.make_step_fn(model, config), state_sh, mesh)
  return step.lower(_sds(abstract, state_sh), batch, rng, text)


def lower_forward(config: ml_collections.ConfigDict, mesh, *, num_classes: int, num_synonyms: int):
  """The evaluator's forward (`inference.semantic_logits`) on `config.train.batch_size` images of
  `config.data.eval_max_size`^2 (padded to a multiple of 32), batch split over the mesh."""
  from ovsnet_jax import inference, sharding  # pylint: disable=g-import-not-at-top
  from ovsnet_jax.models import ovsnet  # pylint: disable=g-import-not-at-top
  sharding.check_batch_size(config.train.batch_size, mesh)
  model = ovsnet.build_model(config)
  params = ovsnet.param_shapes(config)
  rep, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  size = -(-int(config.data.eval_max_size) // 32) * 32
  images = jax.ShapeDtypeStruct((config.train.batch_size, size, size, 3), jnp.float32, sharding=bsh)
  text = abstract_text(config, num_classes, num_synonyms)
  fn = jax.jit(lambda p, x, txt: inference.semantic_logits(model, p, x, txt), out_shardings=bsh)
  return fn.lower(_sds(params, jax.tree.map(lambda _: rep, params)), images,
                  _sds(text, jax.tree.map(lambda _: rep, text)))


LOWER = {'train': lower_train_step, 'forward': lower_forward}


def compile_report(lowered, chip: Optional[Chip]) -> dict:
  """Compiles `lowered`; per-device memory (bytes), FLOPs, bytes accessed, code size, compile time."""
  tick = time.perf_counter()
  compiled = lowered.compile()
  seconds = time.perf_counter() - tick
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  cost = cost or {}
  rep = {'compile_s': seconds,
         'argument_bytes': int(mem.argument_size_in_bytes),
         'output_bytes': int(mem.output_size_in_bytes),
         'alias_bytes': int(mem.alias_size_in_bytes),
         'temp_bytes': int(mem.temp_size_in_bytes),
         'code_bytes': int(mem.generated_code_size_in_bytes),
         'flops': float(cost.get('flops', 0.0)),
         'bytes_accessed': float(cost.get('bytes accessed', 0.0))}
  # Donated (aliased) outputs reuse their argument buffers.
  rep['total_bytes'] = rep['argument_bytes'] + rep['output_bytes'] - rep['alias_bytes'] + rep['temp_bytes']
  if chip is not None:
    rep['hbm_bytes'] = chip.hbm_bytes
    rep['compute_s'] = rep['flops'] / chip.peak_flops
    rep['memory_s'] = rep['bytes_accessed'] / chip.hbm_bytes_per_s
    rep['roofline_s'] = max(rep['compute_s'], rep['memory_s'])
  return rep


def check_fits(rep: dict, what: str) -> None:
  """Raises ValueError when the per-device total exceeds the chip's HBM."""
  if 'hbm_bytes' in rep and rep['total_bytes'] > rep['hbm_bytes']:
    raise ValueError(f"{what} does not fit: {rep['total_bytes'] / GIB:.2f} GiB per chip "
                     f"(arguments {rep['argument_bytes'] / GIB:.2f} + temporaries {rep['temp_bytes'] / GIB:.2f} "
                     f"+ outputs) > {rep['hbm_bytes'] / GIB:.0f} GiB HBM; lower --config.train.batch_size, "
                     'use more chips or a smaller --config.data.crop_size')


class DoesNotFit(cli.UserError):
  """A compiled program needs more memory than its device has available (a one-line launcher error)."""


def available_memory(device: jax.Device) -> Optional[int]:
  """Bytes a new program can still use on `device`: host MemAvailable for CPU devices (they share it),
  else the device's memory_stats limit minus what is in use; None when the backend does not say."""
  if device.platform == 'cpu':
    try:
      with open('/proc/meminfo') as f:
        for line in f:
          if line.startswith('MemAvailable:'):
            return int(line.split()[1]) * 1024
    except OSError:
      return None
    return None
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if not stats or 'bytes_limit' not in stats:
    return None
  return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))


def check_program_fits(compiled, what: str, hint: str, available: Optional[int] = None,
                       devices_sharing: Optional[int] = None) -> Optional[int]:
  """Raises DoesNotFit (naming `what`, the need and `hint`) when a compiled program cannot fit.

  The need is XLA's own memory analysis of the program: its temporaries plus its outputs (its
  arguments, params and the batch, are already resident), times the local devices that share one
  memory (CPU devices all live in host memory). Returns the need in bytes (None if unknown).
  """
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  device = jax.local_devices()[0]
  if devices_sharing is None:
    devices_sharing = jax.local_device_count() if device.platform == 'cpu' else 1
  need = (analysis.temp_size_in_bytes + analysis.output_size_in_bytes) * devices_sharing
  available = available_memory(device) if available is None else available
  if available is not None and need > available:
    raise DoesNotFit(f'{what} needs {need / GIB:.1f} GiB of working memory (XLA memory analysis: temporaries + '
                      f'outputs{f" on {devices_sharing} devices" if devices_sharing > 1 else ""}), but only '
                      f'{available / GIB:.1f} GiB are available on {device.platform}; {hint}')
  return need


def format_report(rep: dict, what: str, devices: list, chip: Optional[Chip]) -> str:
  kind = chip.name if chip else devices[0].device_kind
  lines = [f'{what}: {len(devices)} x {kind}, per device:',
           f"  arguments  {rep['argument_bytes'] / GIB:8.3f} GiB",
           f"  outputs    {rep['output_bytes'] / GIB:8.3f} GiB (aliased to arguments {rep['alias_bytes'] / GIB:.3f})",
           f"  temporary  {rep['temp_bytes'] / GIB:8.3f} GiB",
           f"  total      {rep['total_bytes'] / GIB:8.3f} GiB"
           + (f" of {rep['hbm_bytes'] / GIB:.0f} GiB HBM ({100 * rep['total_bytes'] / rep['hbm_bytes']:.0f}%)"
              if 'hbm_bytes' in rep else ''),
           f"  FLOPs      {rep['flops'] / 1e12:8.3f} TFLOP",
           f"  accessed   {rep['bytes_accessed'] / 1e9:8.1f} GB",
           f"  code       {rep['code_bytes'] / 2**20:8.1f} MiB",
           f"  compile    {rep['compile_s']:8.1f} s"]
  if chip is not None:
    lines.append(f"  roofline   {rep['roofline_s'] * 1e3:8.1f} ms per step (compute {rep['compute_s'] * 1e3:.1f} ms "
                 f"at {chip.peak_flops / 1e12:.0f} TFLOP/s bf16, memory {rep['memory_s'] * 1e3:.1f} ms at "
                 f"{chip.hbm_bytes_per_s / 1e9:.0f} GB/s; {chip.source})")
  return '\n'.join(lines)


def compile_for(config: ml_collections.ConfigDict, topology: str, what: str = 'train', *,
                num_classes: int = 133, num_synonyms: int = 1,
                log: Callable[[str], None] = print, dump_dir: str = '') -> dict:
  """Compiles `what` ('train' or 'forward') of `config` for `topology`; prints and returns the report.

  `dump_dir`: the directory XLA dumps compiled modules to (`XLA_FLAGS=--xla_dump_to=...`, set before
  the backend starts); if given, the report adds where the peak temporary memory goes
  (`peak_memory.report` of this compile's module, as `rep['peak']`).

  Raises:
    ValueError: bad topology / batch size, or the program does not fit the chip's HBM.
  """
  from ovsnet_jax import sharding  # pylint: disable=g-import-not-at-top
  if what not in LOWER:
    raise ValueError(f'--what={what!r}: expected one of {sorted(LOWER)}')
  devices, chip = topology_devices(topology)
  mesh = sharding.make_mesh(devices)
  lowered = LOWER[what](config, mesh, num_classes=num_classes, num_synonyms=num_synonyms)
  earlier = frozenset(peak_memory.assignments(dump_dir)) if dump_dir else frozenset()
  rep = compile_report(lowered, chip)
  log(format_report(rep, f'{what} @ {topology}', devices, chip))
  if dump_dir:
    rep['peak'] = peak_memory.report(dump_dir, exclude=earlier)
    log(peak_memory.format_report(rep['peak'], rep['temp_bytes']))
  check_fits(rep, f'{what} @ {topology}')
  return rep
