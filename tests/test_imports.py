"""The DAQ-side client must stay light: importing it pulls in neither torch nor psana nor h5py."""

from __future__ import annotations

import subprocess
import sys


def test_client_imports_only_numpy_zmq_msgpack():
    code = ("import sys, hitveto_client.veto, hitveto_client.hitwriter, hitveto_client.protocol; "
            "heavy = {'torch', 'psana', 'h5py', 'prometheus_client'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
