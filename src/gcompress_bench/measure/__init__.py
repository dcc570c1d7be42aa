"""Measurement: clocks, energy, operator profiles, ceilings, the environment, the fused layout."""
