"""The trunk benchmark runs end to end and counts FLOPs correctly."""
import pytest

from ovsnet_jax.benchmarks import trunk


def test_analytic_flops_hand_computed():
  # test_tiny at 64x64: stem 196608 MACs; stage0 256*16*(49+128); stage1 64*32*16*4 +
  # 64*32*(49+256); stage2 16*64*32*4 + 2*16*64*(49+512); stage3 4*128*64*4 + 4*128*(49+1024).
  assert trunk.analytic_flops('test_tiny', 1, 64) == 2 * 3_637_760
  assert trunk.analytic_flops('test_tiny', 3, 64) == 3 * 2 * 3_637_760


def test_run_on_tiny_variant():
  figures = trunk.run(['--variant', 'test_tiny', '--batch', '2', '--size', '64', '--dtype', 'fp32',
                       '--iters', '2', '--warmup', '1'])
  assert figures['res5_shape'] == [2, 2, 2, 128]
  assert figures['flops_analytic'] == 2 * 2 * 3_637_760
  # XLA also counts LayerNorm, GELU and residual adds: above the analytic count, by ~27% at
  # these tiny widths (~4% for convnext_base_w_320).
  assert 1.0 <= figures['flops_xla'] / figures['flops_analytic'] < 1.5
  assert figures['img_per_s'] > 0 and figures['tflops_per_s_xla'] > 0


def test_bad_flags():
  with pytest.raises(SystemExit):
    trunk.run(['--size', '100'])
  with pytest.raises(SystemExit):
    trunk.run(['--variant', 'ViT-L-14'])
