"""Flax modules: frozen ConvNeXt-CLIP, pixel decoder, masked-attention decoder, GFA, OVSNet."""
