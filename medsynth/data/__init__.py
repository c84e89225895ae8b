"""Images on disk to tensors: phantoms, datasets, data checks and the modes that split a sample into target and
conditioning."""
