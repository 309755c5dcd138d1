"""The veto daemon: everything that runs while frames stream (docs/DAEMON.md). Imports nothing of
offline/."""
