"""hitveto: the veto daemon, the trainer, the trust tools, detector I/O and the simulator.

Subpackages: serving (the daemon), models (the artifact and what runs it), offline (training and the
tools that work on stored runs), io (psana, geometry, xtc2, peakfinder8), sim (the SFX simulator),
cli (`hitveto COMMAND`). docs/ARCHITECTURE.md maps them.
"""
