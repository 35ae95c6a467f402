"""Small model pieces with one job each: component building, dtypes,
model folders, noise, timesteps, the text-embedding cache, fingerprints."""
