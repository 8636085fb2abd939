"""Model merging: mergekit's methods on the pipeline's models, and the greedy soup."""
