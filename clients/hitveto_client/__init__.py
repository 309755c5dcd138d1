"""hitveto_client: the DAQ side of the veto and its wire protocol; numpy, pyzmq and msgpack only."""
