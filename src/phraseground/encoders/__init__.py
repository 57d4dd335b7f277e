"""Vision backbones with named multi-level taps, and text encoders."""
