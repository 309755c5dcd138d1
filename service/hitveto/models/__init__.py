"""The one-file model artifact, the networks, the input preprocessing and the engine that runs them."""
