"""The SFX frame simulator (docs/SIMULATOR.md)."""
