"""Work on stored runs: datasets and labels, training, evaluation, adaptation, replay, reprocessing."""
